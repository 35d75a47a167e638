"""Baked images on the simulated region, as a user makes and uses one: `up` a 1-node
cluster, `image create` from it, `down`, `up` again on that image, named in the
cluster file by its name (`image: NAME`; no install stage, the same package
versions on the engines), `image delete` (no AMI or snapshot tagged with the
cluster is left, asked with plain boto3).

One cluster of one node is baked (the master: no worker to prefer), so the
cluster's own SSH key is on the node being baked: the image must not carry it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from typing import Any

import pytest
from interrupts import EXE
from oracle import assert_nothing_left, ec2_client, leftovers

from provision import cloud, lifecycle
from provision.context import context_for
from provision.nodes import relay, remote

pytestmark = pytest.mark.e2e
SOURCE, BAKED = "img-src", "img-baked"
IMAGE_NAME = "provision-e2e-baked"
CONFIG = """default: source
clusters:
  base:
    region: sim
    key_path: {root}/key
    cluster_size: 1
    engines_per_node: 1
    ssh_timeout: 120
  source: {{extends: base, name: {source}}}
  baked: {{extends: base, name: {baked}, image: {image}}}
"""
SKIPPED = "install skipped: the environment is there"


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A `provision` command as a user runs it; fails the test with its output."""
    done = subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=dict(os.environ), start_new_session=True)
    assert done.returncode == 0, f"provision {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def _versions(name: str) -> list[dict[str, str]]:
    """The package versions each engine of the cluster imports."""
    rc = lifecycle.connect(name, timeout=60)
    try:
        view = rc[:]
        view.execute("import joblib, numpy, sklearn\n"
                     "v = {'sklearn': sklearn.__version__, 'numpy': numpy.__version__, "
                     "'joblib': joblib.__version__}", block=True)
        return view.pull("v", block=True)
    finally:
        rc.close()


def _cluster_key(name: str) -> str:
    """The public half of the cluster's SSH key on its master ("" when there is none)."""
    ctx = context_for(name)
    master = cloud.describe_cluster(ctx.region, name).master
    assert master is not None, f"{name} has no master"
    key = f"{relay.key_dir(ctx.config.remote_root)}/{relay.KEY_NAME}.pub"
    return remote.run(ctx.endpoint(master), f"cat {key} 2>/dev/null || true").strip()


@pytest.fixture(scope="module")
def journey(sim_region, tmp_path_factory) -> Any:
    """up, image create, down, up on the image; what each step printed and saw."""
    root = tmp_path_factory.mktemp("images")
    seen: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROVISION_STATE_DIR", str(root / "state"))
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "key")],
                       check=True)
        cfg = root / "cluster.yaml"
        # The baked template names the image as a user would: by the name given to
        # `image create --name`, resolved to its id when `up` runs.
        cfg.write_text(CONFIG.format(root=root, source=SOURCE, baked=BAKED, image=IMAGE_NAME))
        try:
            first = _cli("up", "-c", str(cfg), "-t", "source", "--yes")
            seen["first_up"] = first.stdout + first.stderr
            seen["versions"] = _versions(SOURCE)
            seen["key"] = _cluster_key(SOURCE)
            made = _cli("image", "create", SOURCE, "--name", IMAGE_NAME)
            seen["cfg"] = str(cfg)
            seen["image"] = made.stdout.strip().splitlines()[-1]
            seen["create"] = made.stdout + made.stderr
            seen["key_after"] = _cluster_key(SOURCE)
            _cli("down", SOURCE, "--yes")
            again = _cli("up", "-c", str(cfg), "-t", "baked", "--yes")
            seen["baked_up"] = again.stdout + again.stderr
            seen["baked_versions"] = _versions(BAKED)
            seen["baked_key"] = _cluster_key(BAKED)
            _cli("down", BAKED, "--yes")
            yield seen
        finally:
            for name in (SOURCE, BAKED):
                with contextlib.suppress(Exception):  # a step took it down already
                    lifecycle.down(name)
            if seen.get("image", "").startswith("ami-"):
                with contextlib.suppress(Exception):  # the last test deleted it already
                    _cli("image", "delete", seen["image"], "-c", str(cfg))


def test_up_on_a_baked_image_skips_the_install_stage_and_runs_the_same_versions(journey):
    assert journey["image"].startswith("ami-"), journey["create"]
    assert SKIPPED not in journey["first_up"], journey["first_up"]  # a stock image installs
    out = journey["baked_up"]
    assert f"baked image {journey['image']} ({IMAGE_NAME}): install skipped" in out, out
    assert SKIPPED in out, out
    assert journey["baked_versions"] == journey["versions"]


def test_the_image_leaves_the_cluster_key_out_and_the_source_keeps_it(journey):
    assert journey["key"] and journey["key_after"] == journey["key"], journey["create"]
    assert journey["baked_key"] and journey["baked_key"] != journey["key"]


def test_image_delete_leaves_no_ami_or_snapshot_tagged_with_the_cluster(journey, sim_region):
    ec2 = ec2_client(sim_region)
    left = leftovers(ec2, SOURCE)
    assert left.get("images") == [journey["image"]] and len(left.get("snapshots", [])) == 1, left
    deleted = _cli("image", "delete", journey["image"], "-c", journey["cfg"])
    assert f"{journey['image']}: removed" in deleted.stdout
    assert_nothing_left(ec2, SOURCE)
    assert_nothing_left(ec2, BAKED)
    again = _cli("image", "delete", journey["image"], "-c", journey["cfg"])
    assert "nothing left" in again.stdout

"""Shared fixtures. The simulated region is brought up once per session: it costs
seconds (moto's server, the bridge), while each test only launches instances."""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The tests' helper modules: their asserts say what differed, as the tests' own do.
pytest.register_assert_rewrite("faultkit", "interrupts", "oracle", "waits")

from provision.cloud.common import Region  # noqa: E402 - after the rewrite hook


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "run_last: runs after every other test (it stops or restarts the shared region)"
    )
    # Started in the background by a shell (`cmd &`), this process inherits SIGINT
    # ignored, and so would every `provision` it spawns: the Ctrl-C tests need it back.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def in_ci() -> bool:
    """Whether this run is CI's (``CI=true``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true a skip is a failure: a missing requirement (root, iproute2,
    sshd, ansible's tools...) means CI did not test what it claims to. Locally a
    test may still skip, saying why."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every test must run: {reason}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move `run_last` tests to the end of the session, keeping their relative order,
    so no test after them sees a region that was torn down under it."""
    items.sort(key=lambda item: item.get_closest_marker("run_last") is not None)


# EC2's vCPU quotas as a modest account has them (moto's Service Quotas knows only
# VPC's): a test that needs a small one changes the `ec2_vcpu_quotas` fixture's dict.
EC2_VCPU_QUOTAS = {"L-1216C47A": 64.0, "L-34B43A08": 64.0}


@pytest.fixture(autouse=True)
def ec2_vcpu_quotas(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """moto's in-process Service Quotas answering EC2's vCPU quotas (`EC2_VCPU_QUOTAS`);
    a test changes its own copy, which this returns."""
    from moto.servicequotas import models

    values = dict(EC2_VCPU_QUOTAS)
    original = models.ServiceQuotasBackend.get_service_quota

    def get(self: models.ServiceQuotasBackend, service_code: str, quota_code: str) -> dict:
        if service_code == "ec2" and quota_code in values:
            return {"ServiceCode": "ec2", "QuotaCode": quota_code, "Unit": "None",
                    "QuotaName": quota_code, "Value": values[quota_code]}
        return original(self, service_code, quota_code)

    monkeypatch.setattr(models.ServiceQuotasBackend, "get_service_quota", get)
    return values


@pytest.fixture(scope="session")
def sim_region() -> Iterator[Region]:
    """The simulated region, up for the whole session; down (and verified empty) at the end."""
    from provision import sim
    from provision.sim import hosts

    try:
        hosts.check_requirements()
    except hosts.SimError as e:
        pytest.skip(f"simulated region unavailable: {e}")
    st = sim.status()
    if st is not None and st.alive and st.timings.is_instant:
        sim.down()  # the suite runs on AWS's timing and consistency
    sim.up(instant=False)
    yield sim.region()
    sim.down()  # tolerates a region a run_last test already stopped


@pytest.fixture
def sim_key(sim_region: Region, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An ed25519 key pair imported into the region: (key name, private key path)."""
    from provision import sim
    from provision.sim.state import client

    path = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sim-test", "-f", str(path)],
        check=True,
    )
    name = f"test-{uuid.uuid4().hex[:8]}"
    ec2 = client("ec2", sim.region().endpoint_url or "")  # not sim_region: run_last may restart
    ec2.import_key_pair(KeyName=name, PublicKeyMaterial=path.with_suffix(".pub").read_bytes())
    yield name, path
    with contextlib.suppress(Exception):  # the region may be gone already (run_last tests)
        ec2.delete_key_pair(KeyName=name)


@pytest.fixture
def sim_ec2(sim_region: Region) -> Any:
    """An EC2 client of the region as it is now (a run_last test restarts it elsewhere)."""
    from provision import sim
    from provision.sim.state import client

    return client("ec2", sim.region().endpoint_url or "")


@pytest.fixture
def sim_launch(sim_ec2: Any, sim_key: tuple[str, Path]) -> Iterator[Callable[..., Any]]:
    """Run c5.large instances in the sim subnet, as `launch(count, ...)`; returns them once
    `running` (`wait=False`: as RunInstances answered); terminated after the test.

    `image`: an SSM parameter (default Ubuntu's) or an AMI id; `spot`: a one-time spot
    launch; `groups`: security group ids; anything else goes to RunInstances as is.
    """
    from simhelp import UBUNTU, retry_not_found, st_hosts, wait_state, wait_until

    from provision import sim
    from provision.sim.state import client

    region = sim.region()
    ids: list[str] = []

    def launch(count: int = 1, *, public: bool = True, image: str = UBUNTU, spot: bool = False,
               groups: list[str] | None = None, wait: bool = True, **extra: Any) -> list[Any]:
        nic: dict[str, Any] = {"DeviceIndex": 0, "SubnetId": region.subnet_id,
                               "AssociatePublicIpAddress": public}
        if groups:
            nic["Groups"] = groups
        if spot:
            extra["InstanceMarketOptions"] = {"MarketType": "spot"}
        if not image.startswith("ami-"):
            ssm = client("ssm", region.endpoint_url or "")
            image = ssm.get_parameter(Name=image)["Parameter"]["Value"]
        r = sim_ec2.run_instances(
            ImageId=image, InstanceType="c5.large", MinCount=count, MaxCount=count,
            KeyName=sim_key[0], NetworkInterfaces=[nic], MetadataOptions={"HttpTokens": "required"},
            **extra,
        )
        ids.extend(i["InstanceId"] for i in r["Instances"])
        if not wait:
            return list(r["Instances"])
        return [wait_state(sim_ec2, i["InstanceId"], "running") for i in r["Instances"]]

    yield launch
    st = sim.status()
    if ids and st is not None and st.alive and st.endpoint == region.endpoint_url:
        retry_not_found(lambda: sim_ec2.terminate_instances(InstanceIds=ids))
        wait_until(lambda: not set(ids) & {h.instance_id for h in st_hosts()}, what="hosts to go")


@functools.cache
def _moto_images() -> list[dict[str, Any]]:
    """moto's default images plus us-east-1's "latest" ones, which SSM's public
    parameters (the default image lookup) name."""
    import moto

    resources = Path(moto.__file__).parent / "ec2" / "resources"
    default = json.loads(gzip.decompress((resources / "amis.json.gz").read_bytes()))
    latest = json.loads(gzip.decompress(
        (resources / "latest_amis" / "us-east-1.json.gz").read_bytes()))
    return default + latest


@pytest.fixture(scope="session")
def moto_default_amis(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The images of `_moto_images` as a file, for MOTO_AMIS_PATH (see `moto_amis`)."""
    path = tmp_path_factory.mktemp("moto-amis") / "amis.json"
    path.write_text(json.dumps(_moto_images()))
    return str(path)


@pytest.fixture
def moto_amis(monkeypatch: pytest.MonkeyPatch, moto_default_amis: str) -> None:
    """The same images in every in-process moto test, whatever ran before.

    With MOTO_AMIS_PATH set, moto skips its ~1,300 "latest" and ECS images on each
    reset (about halving a reset). But moto reads the file only at its first import
    and keeps backends across `mock_aws` contexts (getmoto/moto#6592), so a test
    that set the variable and one that did not saw each other's images: the image
    list is pinned here, in the variable and in the loaded module alike.
    """
    from moto.ec2.models import amis

    monkeypatch.setenv("MOTO_AMIS_PATH", moto_default_amis)
    monkeypatch.setattr(amis, "AMIS", _moto_images())


def offline_aws_env(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Dummy credentials, us-east-1, no endpoint or profile, and a private home and
    state dir: what every moto-backed CLI test needs before `mock_aws`."""
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL_SSM", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("HOME", str(home / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "home/.config"))
    monkeypatch.setenv("PROVISION_STATE_DIR", str(home / "state"))


@contextlib.contextmanager
def sim_cluster_env(
    root: Path, name: str, cluster_size: int, **settings: object
) -> Iterator[dict[str, Path]]:
    """A module's cluster on the simulated region: a private state dir
    (``PROVISION_STATE_DIR``), a key and a cluster file under `root` (plus any
    `settings`, e.g. ``public_ip=False``); after the module, the cluster is
    brought down (if still up) and the variable restored."""
    from provision import lifecycle

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROVISION_STATE_DIR", str(root / "state"))
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "key")], check=True
        )
        cfg = root / "cluster.yaml"
        cfg.write_text(
            f"default: sim\nclusters:\n  sim:\n    region: sim\n    name: {name}\n"
            f"    key_path: {root}/key\n    cluster_size: {cluster_size}\n    spot_bid: 0.10\n"
            "    engines_per_node: 1\n    ssh_timeout: 120\n"
            + "".join(f"    {k}: {json.dumps(v)}\n" for k, v in settings.items())
        )
        try:
            yield {"root": root, "config": cfg}
        finally:
            with contextlib.suppress(Exception):  # already down if a test took it down
                lifecycle.down(name)


@contextlib.contextmanager
def namespace_hosts(
    tmp: Path, tag: str, bridge_cidr: str, names: dict[str, str]
) -> Iterator[Path]:
    """Namespace hosts (address -> hostname) with their own sshd, made directly with
    `provision.sim.hosts` (no EC2 API), on a bridge of their own: bridge, namespace
    and veth names carry `tag`, so a simulated region running at the same time
    neither reaps nor routes them. Yields the private key they accept; skips
    where hosts cannot be made."""
    from provision.sim import hosts

    try:
        hosts.check_requirements()
    except hosts.SimError as e:
        pytest.skip(f"namespace hosts unavailable: {e}")
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    prefixlen = int(bridge_cidr.split("/")[1])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hosts, "BRIDGE", f"{tag}br{hosts.SIM_ID}")
        mp.setattr(hosts, "NETNS_PREFIX", f"{tag}{hosts.SIM_ID}-")
        mp.setattr(hosts, "VETH_PREFIX", f"{tag}v{hosts.SIM_ID}")
        mp.setattr(hosts, "STATE_ROOT", tmp / "sim")
        try:
            for ip in names:
                hosts.stop_host(hosts.netns_name(ip))  # leftovers of a killed run
            hosts.ensure_bridge(bridge_cidr)
            pub = key.with_suffix(".pub").read_text()
            for ip, hostname in names.items():
                hosts.start_host(ip, prefixlen, pub, hostname, tmpfs_size="1g")
            yield key
        finally:
            for ip in names:
                hosts.stop_host(hosts.netns_name(ip))
            hosts.remove_bridge()


@contextlib.contextmanager
def namespace_host(
    tmp: Path, tag: str, bridge_cidr: str, ip: str, hostname: str, label: str
) -> Iterator[Any]:
    """One host of `namespace_hosts`, answering SSH as root: its `Endpoint` (named `label`)."""
    from provision.nodes import remote

    with namespace_hosts(tmp, tag, bridge_cidr, {ip: hostname}) as key:
        ep = remote.Endpoint(label, ip, "root", key, tmp / "known_hosts")
        remote.wait_for_ssh(ep, 30)
        yield ep

"""The Ansible path: `provision inventory` from tags, ansible/site.yml, and
`provision up --configure-with ansible` giving what the Fabric path gives."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle
import pytest
import test_cli
import yaml
from conftest import sim_cluster_env
from oracle import assert_nothing_left, ec2_client
from test_cli import _launch_unit_cluster, invoke, nothing_created

from provision import cloud, context, inventory, lifecycle
from provision.assets import ansible_dir
from provision.configure import playbook
from provision.nodes import engines
from provision.sim.state import GATEWAY

ANSIBLE = ansible_dir()
BIN = Path(sys.executable).parent
aws, cfg_file = test_cli.aws, test_cli.cfg_file  # the CLI tests' moto fixtures
# Engines cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _ansible_env(**extra: str) -> dict[str, str]:
    env = dict(
        os.environ, ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"), ANSIBLE_NOCOLOR="1", **extra
    )
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _ansible_inventory(path: Path) -> dict:
    out = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(path), "--list"],
        env=_ansible_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


# --- inventory (moto) ----------------------------------------------------------------


def test_inventory_lists_master_and_workers_with_ssh_engine_and_venv_settings(aws, cfg_file):
    ctx = _launch_unit_cluster(cfg_file)
    doc = inventory.inventory("unit")
    info = cloud.describe_cluster(ctx.region, "unit")
    assert doc["master"]["hosts"] == ["master"]
    assert doc["workers"]["hosts"] == [w.name for w in info.workers] == ["node001", "node002"]
    master = doc["_meta"]["hostvars"]["master"]
    assert master["ansible_host"] == info.master.public_ip  # the SSH address
    assert master["private_ip"] == info.master.private_ip
    assert master["ansible_user"] == "ec2-user"  # the image's: moto resolves Amazon Linux 2023
    assert master["ansible_ssh_private_key_file"] == str(cfg_file.parent / "id_ed25519")
    known_hosts = Path(os.environ["PROVISION_STATE_DIR"]) / "clusters/unit/known_hosts"
    assert f"UserKnownHostsFile={known_hosts}" in master["ansible_ssh_common_args"]
    assert master["vcpus"] == 2 and master["engines"] == 2  # c5.large, one engine per vCPU
    assert master["venv"] == "/srv/provision/venv"
    assert master["connection_file"] == "/srv/provision/ipython/security/ipcontroller-client.json"
    shared = doc["all"]["vars"]
    assert shared["controller_ip"] == info.master.private_ip
    assert shared["heartbeat_ms"] == engines.HEARTBEAT_MS
    assert shared["python_minor"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert "ipyparallel==" in shared["env_requirements"]


def test_list_and_host_answer_like_a_dynamic_inventory_script(aws, cfg_file):
    _launch_unit_cluster(cfg_file)
    listed = invoke("inventory", "unit", "--list")
    assert listed.exit_code == 0, listed.output
    doc = json.loads(listed.output)
    assert set(doc) >= {"all", "master", "workers", "_meta"}
    one = invoke("inventory", "unit", "--host", "node001")
    assert one.exit_code == 0, one.output
    assert json.loads(one.output) == doc["_meta"]["hostvars"]["node001"]
    missing = invoke("inventory", "unit", "--host", "node009")
    assert missing.exit_code == 2 and "node009" in missing.output and "node001" in missing.output


def test_yaml_ini_and_json_inventories_mean_the_same_to_ansible(aws, cfg_file, tmp_path):
    _launch_unit_cluster(cfg_file)
    seen = {}
    for fmt in ("yaml", "ini", "json"):
        result = invoke("inventory", "unit", "--format", fmt)
        assert result.exit_code == 0, result.output
        if fmt == "json":  # the --list format is read by the script plugin: wrap it as one
            path = tmp_path / "inv.sh"
            path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{result.output}EOF\n")
            path.chmod(0o755)
        else:
            path = tmp_path / f"inv.{'yml' if fmt == 'yaml' else 'ini'}"
            path.write_text(result.output)
        seen[fmt] = _ansible_inventory(path)
    assert (
        seen["yaml"]["_meta"]["hostvars"]
        == seen["ini"]["_meta"]["hostvars"]
        == seen["json"]["_meta"]["hostvars"]
    )
    hosts = seen["ini"]["_meta"]["hostvars"]
    assert (
        hosts["master"]["python_minor"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    )  # not a float
    assert hosts["node002"]["engines"] == 2 and hosts["node002"]["datasets"] == []
    assert seen["ini"]["master"]["hosts"] == ["master"]
    assert seen["ini"]["workers"]["hosts"] == ["node001", "node002"]
    assert yaml.safe_load(invoke("inventory", "unit").output)["all"]["children"]["workers"]["hosts"]


def test_configure_with_ansible_without_ansible_playbook_exits_2_and_creates_nothing(
    aws, cfg_file, monkeypatch, tmp_path
):
    """No ansible-playbook beside this Python or on PATH: the check that looks for
    it says so itself (nothing here writes the message it is asked for)."""
    bare = tmp_path / "bare-venv" / "bin"
    bare.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(bare / "python"))
    monkeypatch.setenv("PATH", str(bare))
    result = invoke("up", "--config", str(cfg_file), "--configure-with", "ansible")
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: --configure-with ansible: ansible-playbook not found"), line
    assert "pip install ansible-core" in line
    nothing_created(aws)


# --- playbook, offline ---------------------------------------------------------------


def test_the_playbook_passes_ansible_syntax_check():
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "--syntax-check", "site.yml"],
        cwd=ANSIBLE,
        env=_ansible_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_playbook_passes_ansible_lint_at_the_production_profile():
    lint = shutil.which("ansible-lint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if lint is None:
        pytest.skip("ansible-lint is optional: pip install ansible-lint")
    proc = subprocess.run(
        [lint, "--offline", "--format", "pep8", "site.yml"],
        cwd=ANSIBLE,
        env=_ansible_env(NO_COLOR="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_roles_start_processes_with_the_fabric_paths_flags_and_shell_functions():
    from jinja2 import Environment, FileSystemLoader

    def defaults(role: str) -> dict:
        return yaml.safe_load((ANSIBLE / "roles" / role / "defaults/main.yml").read_text())

    controller, workers = defaults("controller"), defaults("engines")
    assert controller["heartbeat_ms"] == engines.HEARTBEAT_MS
    assert controller["heartbeat_misses"] == engines.HEARTBEAT_MISSES
    assert controller["task_hwm"] == engines.TASK_HWM
    assert controller["client_json"] == engines.CLIENT_JSON
    assert controller["engine_json"] == workers["engine_json"] == engines.ENGINE_JSON
    assert workers["engine_env"] == engines.THREAD_ENV
    assert workers["engine_flags"] == engines.ENGINE_FLAGS
    env = Environment(loader=FileSystemLoader(str(ANSIBLE / "templates")))
    env.filters["quote"] = __import__("shlex").quote
    prelude = env.get_template("prelude.sh.j2").render(remote_root="/srv/my root")
    assert prelude.strip() == engines._prelude("/srv/my root").strip()


SAMPLE = """\
PLAY [Python environment and data directory on every node] *****

TASK [python_env : The node has the client's Python minor] *****
ok: [master]
fatal: [node001]: FAILED! => {"assertion": "x", "changed": false, "evaluated_to": false, "msg": "node001 (10.77.0.5): Python 3.9 on the node, 3.11 on this client"}

TASK [engines : 1 engine(s) running] ****
fatal: [node002]: UNREACHABLE! => {"changed": false, "msg": "Failed to connect to the host via ssh: ssh: connect to host 10.77.0.6 port 22: No route to host", "unreachable": true}
failed: [master] (item=x) => {"ansible_loop_var": "item", "changed": false, "cmd": "false", "item": "x", "msg": "non-zero return code", "rc": 3, "stderr": "ipcontroller exited:\\nboom", "stdout": ""}

PLAY RECAP *********************************************************************
master                     : ok=12   changed=3    unreachable=0    failed=1    skipped=2    rescued=0    ignored=0
node001                    : ok=2    changed=0    unreachable=0    failed=1    skipped=0    rescued=0    ignored=0
node002                    : ok=0    changed=0    unreachable=1    failed=0    skipped=0    rescued=0    ignored=0
node003                    : ok=9    changed=0    unreachable=0    failed=0    skipped=4    rescued=0    ignored=0
"""  # noqa: E501 - ansible-playbook's own output, verbatim


def test_recap_counts_and_failures_are_read_per_host_naming_the_task():
    recap = playbook.parse_recap(SAMPLE)
    assert recap["master"].changed == 3 and recap["node003"].succeeded
    assert recap["node002"].unreachable == 1
    result = playbook.PlaybookResult(
        recap=recap, errors=playbook.parse_failures(SAMPLE), returncode=2, seconds=1
    )
    assert result.changed == 3 and result.failed_hosts == ["master", "node001", "node002"]
    assert result.error_for("node003") is None
    err = str(result.error_for("node001", "10.77.0.5"))
    assert (
        err.startswith("node001 (10.77.0.5): ansible: python_env : The node has")
        and "Python 3.9" in err
    )
    assert "No route to host" in str(result.error_for("node002"))
    assert "exit 3" in str(result.error_for("master")) and "boom" in str(result.error_for("master"))
    assert "not in the playbook's recap" in str(result.error_for("node004"))


def test_a_failing_and_an_unreachable_node_are_named_while_the_other_node_finishes(tmp_path):
    book = tmp_path / "book.yml"
    book.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: Work\n      ansible.builtin.shell: echo boom >&2; exit {{ code }}\n"
        "      changed_when: false\n"
    )
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    doc = {
        "all": {"children": ["master", "workers"], "vars": {}},
        "master": {"hosts": ["master"]},
        "workers": {"hosts": ["node001", "node002"]},
        "_meta": {
            "hostvars": {
                "master": {**local, "code": 0},
                "node001": {**local, "code": 3},
                "node002": {
                    "ansible_host": "127.0.0.1",
                    "ansible_port": 1,
                    "code": 0,
                },  # nothing listens
            }
        },
    }
    progress: list[tuple[str, str]] = []
    result = playbook.run_playbook(
        doc, playbook=book, on_progress=lambda h, t: progress.append((h, t))
    )
    assert result.failed_hosts == ["node001", "node002"] and result.changed == 0
    assert result.error_for("master") is None
    assert (
        str(result.error_for("node001", "10.77.0.5"))
        == "node001 (10.77.0.5): ansible: Work: exit 3: boom"
    )
    assert "node002" in str(result.error_for("node002")) and "port 1" in str(
        result.error_for("node002")
    )
    assert ("master", "ansible: Work (ok)") in progress


# --- end to end on the simulated region ------------------------------------------------

NAME = "ansible-e2e"


@pytest.fixture(scope="module")
def sim_env(sim_region, tmp_path_factory):
    # The worker has no public address: Ansible reaches it through the master
    # (a ProxyCommand in its ansible_ssh_common_args), as the image's user with sudo.
    with sim_cluster_env(tmp_path_factory.mktemp("ansible-e2e"), NAME, 2, public_ip=False) as env:
        yield env


@pytest.fixture(scope="module")
def ansible_cluster(sim_env):
    from provision.config import load_config

    started = time.monotonic()
    result = lifecycle.up(load_config(sim_env["config"]), configure_with="ansible")
    print(f"up --configure-with ansible: {time.monotonic() - started:.1f} s")
    return result


def _hostname() -> str:
    import socket

    return socket.gethostname()


@pytest.mark.e2e
def test_up_configured_by_the_playbook_registers_one_engine_on_each_of_two_hosts(ansible_cluster):
    assert ansible_cluster.failed == [] and ansible_cluster.engines == 2
    rc = lifecycle.connect(NAME, timeout=120)
    try:
        assert len(rc.ids) == 2
        rc[:].use_cloudpickle()
        names = rc[:].apply_sync(_hostname)
        assert len(set(names)) == 2 and all(
            n.startswith("ip-" + GATEWAY.rsplit(".", 1)[0].replace(".", "-") + "-") for n in names
        )
    finally:
        rc.close()


@pytest.mark.e2e
def test_only_the_master_installs_and_the_worker_takes_its_environment(ansible_cluster):
    # What `uv pip install` leaves on a node (its cache, the wheelhouse it installs from).
    ran = subprocess.run(
        [str(BIN / "provision"), "exec", NAME, "--",
         "ls -d /srv/provision/uv-cache /srv/provision/wheels 2>/dev/null; "
         "/srv/provision/venv/bin/python -c 'import sklearn; print(sklearn.__version__)'"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    worker = ran.stdout.split("node001:", 1)[1]
    assert "uv-cache" in ran.stdout.split("node001:", 1)[0], ran.stdout  # the master installed
    assert "uv-cache" not in worker and "wheels" not in worker, ran.stdout


@pytest.mark.e2e
def test_a_second_playbook_run_through_the_dynamic_inventory_changes_nothing(ansible_cluster):
    started = time.monotonic()
    control = tempfile.mkdtemp(prefix="pa-", dir="/tmp")  # not ~/.ansible/cp: addresses get reused
    try:
        proc = subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", "inventory.py", "site.yml"],
            cwd=ANSIBLE,
            capture_output=True,
            text=True,
            env=_ansible_env(PROVISION_CLUSTER=NAME, ANSIBLE_SSH_CONTROL_PATH_DIR=control),
            timeout=600,
        )
    finally:
        playbook._close_control_sockets(control)
    print(f"second playbook run: {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    recap = playbook.parse_recap(proc.stdout)
    assert sorted(recap) == ["master", "node001"]
    assert all(r.changed == 0 and r.succeeded for r in recap.values()), proc.stdout[-3000:]


@pytest.mark.e2e
def test_the_inventory_script_without_provision_importable_asks_the_provision_command(
    ansible_cluster, tmp_path
):
    python = shutil.which("python3", path="/usr/bin")
    env = _ansible_env(PROVISION_CLUSTER=NAME)
    env.pop("PYTHONPATH", None)
    # Run away from the checkout: from its root, any python3 imports provision from ''.
    probe = subprocess.run([python or "python3", "-c", "import provision"], cwd=tmp_path,
                           env=env, capture_output=True)
    if python is None or probe.returncode == 0:
        pytest.skip("needs a python3 that cannot import provision")
    listed = subprocess.run(
        [python, str(ANSIBLE / "inventory.py"), "--list"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == inventory.inventory(NAME)
    one = subprocess.run([python, str(ANSIBLE / "inventory.py"), "--host", "node001"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert json.loads(one.stdout)["engines"] == 1


@pytest.mark.e2e
def test_the_playbook_gives_a_node_the_datasets_the_cluster_already_holds(ansible_cluster):
    from provision import data, inventory
    from provision.nodes import remote

    ctx = context.context_for(NAME)
    shipped = data.put_data(ctx, "iris", n_splits=2)
    node = cloud.describe_cluster(ctx.region, NAME).find("node001")
    remote.run(ctx.endpoint(node), f"rm -rf {shipped.remote_dir}")  # as on a node added later
    result = playbook.run_playbook(inventory.inventory(NAME))
    assert result.failed_hosts == [], result.errors
    assert result.recap["master"].changed == 0 and result.recap["node001"].changed > 0
    listing = remote.run(ctx.endpoint(node), f"ls {shipped.remote_dir}").split()
    assert sorted(listing) == sorted([*shipped.files, "manifest.json"])


@pytest.mark.e2e
def test_the_fabric_path_takes_over_the_playbooks_nodes_as_its_own(ansible_cluster):
    from provision.nodes import fanout, setup
    from provision.nodes import wheelhouse as wheelhouses

    ctx = context.context_for(NAME)
    info = cloud.describe_cluster(ctx.region, NAME)
    spec = ctx.env_spec()  # what `up` gives both strategies
    wheelhouse = wheelhouses.build_wheelhouse(spec)
    for inst in info.nodes:
        assert setup.setup_node(
            ctx.endpoint(inst), spec, wheelhouse
        ).skipped  # same venv, same digest
    group = fanout.on_hosts(lambda ep: engines.engine_counts(ep, ctx.config.remote_root),
                            [ctx.endpoint(i) for i in info.nodes])
    assert dict(group) == {"master": 1, "node001": 1}
    assert (
        lifecycle.restart_engines(NAME) == 2
    )  # pid files and engine file where Fabric expects them
    rc = lifecycle.connect(NAME, n_engines=2, timeout=120)
    try:
        assert len(rc.ids) >= 2
    finally:
        rc.close()


@pytest.mark.e2e
def test_down_after_the_ansible_path_leaves_nothing(ansible_cluster):
    region = context.context_for(NAME).region
    lifecycle.down(NAME)
    assert_nothing_left(ec2_client(region), NAME)

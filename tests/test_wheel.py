"""A user installs the wheel, not this checkout: every file a command needs ships in it.

The wheel is built from a copy of the package sources (so nothing next to the
checkout can stand in for package data) and installed with uv into a fresh
venv, at the versions this environment runs. Then, from a plain subprocess in
an empty directory, with neither the checkout nor its venv on any path: the
CLI starts, `provision init` writes the starter file, the Ansible playbook,
roles, inventory script and IAM policy are found inside site-packages, and
what starting engines needs on the client (the node environment's pinned
packages, pip for the wheelhouse, the uv binary) is there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).parent / "uv"  # a dependency of provision: in this venv


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the fresh venv's bin directory)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("provision", "payload"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    _run([str(UV), "build", "--quiet", "--wheel", "--out-dir", str(tmp / "dist"), str(src)], tmp)
    (wheel,) = (tmp / "dist").glob("provision-*.whl")
    venv = tmp / "venv"
    _run([str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)], tmp)
    pins = _run([str(UV), "pip", "freeze", "--exclude-editable", "--python", sys.executable], tmp)
    (tmp / "pins.txt").write_text(pins)
    _run([str(UV), "pip", "install", "--quiet", "--python", str(venv / "bin/python"),
          "-c", str(tmp / "pins.txt"), str(wheel)], tmp)
    return wheel, venv / "bin"


def _user_env(home: Path, bin_dir: Path) -> dict[str, str]:
    """A user's shell: the venv's bin first, no PYTHONPATH, a home of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               PATH=f"{bin_dir}{os.pathsep}/usr/bin:/bin")
    return env


def test_the_wheel_holds_the_starter_file_the_playbook_and_the_iam_policy(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("provision/templates/cluster.yaml", "provision/ansible/site.yml",
                   "provision/ansible/ansible.cfg", "provision/ansible/inventory.py",
                   "provision/ansible/roles/python_env/tasks/main.yml",
                   "provision/iam-policy.json"):
        assert needed in names, needed


def test_init_help_and_file_lookups_work_from_a_wheel_install(installed, tmp_path):
    _, bin_dir = installed
    env = _user_env(tmp_path / "home", bin_dir)
    work = tmp_path / "work"
    work.mkdir()
    assert "provision init" in _run([str(bin_dir / "provision"), "--help"], work, env)
    _run([str(bin_dir / "provision"), "init", "--path", str(work / "cluster.yaml")], work, env)
    starter = ROOT / "provision/templates/cluster.yaml"
    assert (work / "cluster.yaml").read_text() == starter.read_text()

    probe = r"""
import json, subprocess, sys, importlib.metadata as md
import uv
import provision
from provision import assets
from provision.configure import playbook
from provision.nodes import setup
spec = setup.client_env_spec()
pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
ansible = assets.ansible_dir()
print(json.dumps({
    "package": provision.__file__,
    "site_yml": str(ansible / "site.yml") if (ansible / "site.yml").is_file() else "",
    "roles": sorted(p.name for p in (ansible / "roles").iterdir()),
    "ansible_cfg": (ansible / "ansible.cfg").is_file(),
    "inventory_script": (ansible / "inventory.py").is_file(),
    "playbook_dir": str(playbook.ansible_dir()),
    "policy": json.loads(assets.iam_policy_path().read_text())["Version"],
    "node_packages": sorted(r.split("==")[0].lower() for r in spec.requirements),
    "pip": pip.returncode == 0,
    "uv": uv.find_uv_bin(),
}))
"""
    found = json.loads(_run([str(bin_dir / "python"), "-c", probe], work, env))
    site = str(bin_dir.parent / "lib")
    assert found["package"].startswith(site), found["package"]  # not the checkout
    assert found["site_yml"].startswith(site) and found["playbook_dir"].startswith(site)
    assert found["roles"] == ["controller", "data_dir", "engines", "python_env"]
    assert found["ansible_cfg"] and found["inventory_script"]
    assert found["policy"] == "2012-10-17"
    assert {"ipyparallel", "scikit-learn", "cloudpickle", "numpy"} <= set(found["node_packages"])
    assert found["pip"], "the wheelhouse needs `python -m pip`: pip must be a dependency"
    assert Path(found["uv"]).is_file()

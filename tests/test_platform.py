"""Wheels and uv for the nodes' platform, never the client's.

The node platform comes from the instance type's architecture (EC2's
DescribeInstanceTypes, served by moto here): a Graviton `c7g` cluster built
from this x86_64 machine gets aarch64 wheels (downloaded from PyPI) and an
aarch64 uv; a laptop claiming to be macOS arm64 still builds manylinux wheels
for x86_64 nodes, and may not build a missing wheel itself.
"""

from __future__ import annotations

import gzip
import platform
import sys
from pathlib import Path

import pytest
from conftest import offline_aws_env
from moto import mock_aws
from packaging.utils import parse_wheel_filename

from provision import context
from provision.nodes import setup
from provision.nodes import wheelhouse as wheelhouses
from provision.schema import ClusterConfig

ELF_MACHINE = {b"\x3e\x00": "x86_64", b"\xb7\x00": "aarch64"}  # e_machine, little-endian


def elf_machine(binary: bytes) -> str:
    assert binary[:4] == b"\x7fELF", "not a Linux (ELF) executable"
    return ELF_MACHINE.get(binary[18:20], repr(binary[18:20]))


def wheel_machines(wheelhouse: Path) -> set[str]:
    """The machine of every wheel: "any" for pure ones, else what its platform tags name."""
    found = set()
    for wheel in wheelhouse.glob("*.whl"):
        tags = parse_wheel_filename(wheel.name)[3]
        platforms = {t.platform for t in tags}
        if platforms == {"any"}:
            found.add("any")
        else:
            found |= {m for m in ("x86_64", "aarch64") if any(p.endswith(m) for p in platforms)}
            found |= {p for p in platforms if not p.startswith(("manylinux", "musllinux"))}
    return found


@pytest.fixture
def c7g_context(monkeypatch, tmp_path) -> context.Context:
    offline_aws_env(monkeypatch, tmp_path)
    with mock_aws():
        cfg = ClusterConfig(region="us-east-1", instance_type="c7g.large",
                            ssh_cidr="203.0.113.7/32", key_path=tmp_path / "key")
        yield context.prepare(cfg, need_key=False)


def test_nodes_get_manylinux_tags_of_their_architecture_whatever_the_client_runs() -> None:
    assert setup.platform_for("x86_64") == "manylinux_2_28_x86_64"
    assert setup.platform_for("arm64") == "manylinux_2_28_aarch64"
    tags = wheelhouses._platform_tags("manylinux_2_28_aarch64")
    assert tags[0] == "manylinux_2_28_aarch64" and "manylinux2014_aarch64" in tags
    assert setup._marker_env("3.11", "manylinux2014_x86_64")["platform_machine"] == "x86_64"


def test_the_env_spec_takes_the_platform_from_the_instance_type(c7g_context) -> None:
    assert c7g_context.type_info.arch == "arm64"
    spec = c7g_context.env_spec()
    assert spec.platform == "manylinux_2_28_aarch64"
    assert spec.python_minor == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_a_c7g_wheelhouse_built_on_x86_64_holds_only_aarch64_or_pure_wheels_and_aarch64_uv(
    c7g_context,
) -> None:
    assert platform.machine() == "x86_64"  # the point of the test: another architecture
    spec = c7g_context.env_spec()
    built = wheelhouses.build_wheelhouse(spec)  # the user's cache: downloaded once from PyPI
    assert wheel_machines(built) <= {"aarch64", "any"}, wheel_machines(built)
    assert "aarch64" in wheel_machines(built)  # numpy, scipy, scikit-learn, pyzmq...
    assert len(list(built.glob("*.whl"))) == len(spec.requirements)
    assert elf_machine(gzip.decompress((built / setup.UV_GZ).read_bytes())) == "aarch64"


def test_a_client_claiming_macos_arm64_builds_manylinux_wheels_and_uv_for_x86_64_nodes(
    monkeypatch, tmp_path
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    spec = setup.client_env_spec(platform=setup.platform_for("x86_64"))
    assert spec.platform == "manylinux_2_28_x86_64"
    assert not setup.builds_here(spec.platform)  # a missing wheel cannot be built on a Mac
    args = wheelhouses._pip(spec, "download", tmp_path, ["numpy==2.0.0"])
    assert "--platform=manylinux_2_28_x86_64" in args and "--only-binary=:all:" in args
    assert not any("macosx" in a for a in args)
    wheelhouses._add_uv(spec, tmp_path)  # the local uv would be a Mach-O: downloaded instead
    assert elf_machine(gzip.decompress((tmp_path / setup.UV_GZ).read_bytes())) == "x86_64"

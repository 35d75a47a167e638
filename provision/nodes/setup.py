"""Node environments: the client's Python minor and exact package versions, fast.

Engines unpickle what the client pickles (estimators, closures, numpy arrays), so
a node must run the versions the client runs, not whatever an index resolves
today. The versions are read from the client's own installation, the wheels are
downloaded once on the client into a wheelhouse keyed by those versions, pushed
once per node as one tar stream, and installed with ``uv`` offline: nodes never
need a route to an index (the simulated hosts have none), and a node takes
seconds instead of pip's minutes.

Wheels and uv are always for the nodes' platform (manylinux, the architecture
of the instance type), never the client's: a macOS laptop or an x86_64 one
driving Graviton nodes ships what the nodes run. The interpreter is the
image's ``python3`` when it is the client's minor, else a standalone CPython
the node installs (`provision.nodes.python`).

Re-running is cheap: the install digest is written last on the node, and a node
whose digest matches and whose venv starts is skipped after one SSH round trip.
In a cluster only the master installs: workers take its installed environment
(`fetch_env`, `provision.nodes.envcopy`) and install only when that fails.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import platform as _platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import fabric
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from provision.errors import one_line_tail
from provision.nodes import python
from provision.nodes.python import PythonGate, PythonSource
from provision.nodes.remote import TRANSIENT_ERRORS, Endpoint, NodeError, connection, run
from provision.nodes.transfer import own_dir, push_tree

T = TypeVar("T")

# What every node needs, whatever the payload: engines, pickling, the estimators.
BASE_PACKAGES = (
    "ipyparallel",
    "cloudpickle",
    "scikit-learn",
    "numpy",
    "scipy",
    "joblib",
    "threadpoolctl",
    "psutil",
)
UV_GZ = "uv.gz"  # the uv binary, gzipped: 38 MB -> 18 MB of the push

INSTALL_TIMEOUT_S = 900  # `uv venv` + `uv pip install` from the pushed wheels
ProgressFn = Callable[[int, int, str], None]  # (done, total, what)


@dataclass(frozen=True)
class EnvSpec:
    """What a node's environment must be; `digest` names it on the node and in the cache."""

    python_minor: str  # "3.11"
    requirements: tuple[str, ...]  # "name==version", sorted, transitive closure
    remote_root: str = "/srv/provision"
    # Wheel platform tag of the nodes such as "manylinux_2_28_aarch64" (see
    # `platform_for`); None = this client's own platform (tests on this machine).
    platform: str | None = None
    # Where a node without the client's minor gets one: not part of the digest,
    # since the environment it makes is the same.
    python_source: PythonSource = PythonSource()

    @property
    def digest(self) -> str:
        blob = json.dumps(
            [self.python_minor, sorted(self.requirements), self.remote_root, self.platform]
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def venv(self) -> str:
        return f"{self.remote_root}/venv"


@dataclass(frozen=True)
class SetupResult:
    name: str
    skipped: bool  # the node already had this exact environment
    seconds: float
    copied: bool = False  # it got the master's environment (`provision.nodes.envcopy`)


_ARCHES = ("x86_64", "aarch64", "i686", "ppc64le", "s390x", "armv7l")
# glibc of the oldest image nodes boot (Amazon Linux 2023 has 2.34, Ubuntu 22.04
# 2.35, Debian 12 2.36): wheels up to manylinux_2_28 run on every one of them.
MANYLINUX = "manylinux_2_28"


def machine_of(arch: str) -> str:
    """The wheel-tag machine of an EC2 architecture ("arm64" -> "aarch64")."""
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(arch, arch)


def platform_for(arch: str) -> str:
    """The `EnvSpec.platform` of nodes of EC2 architecture `arch` ("x86_64", "arm64").

    Always a manylinux tag of the nodes' machine, whatever this client runs
    (macOS, another architecture, a Linux with a newer glibc than the image):
    what a node installs must run on the node.
    """
    return f"{MANYLINUX}_{machine_of(arch)}"


def builds_here(platform: str | None) -> bool:
    """Whether a wheel built on this client runs on nodes of `platform` (a package
    with no binary wheel can then be built here)."""
    if platform is None:
        return True
    return sys.platform == "linux" and platform.endswith("_" + _platform.machine())


def _marker_env(python_minor: str, platform: str | None) -> dict[str, str]:
    """Environment markers as seen on the nodes, not necessarily on this client."""
    env = dict(default_environment())
    env.update(python_version=python_minor, extra="")
    if platform is not None and "linux" in platform:
        machine = next((a for a in _ARCHES if platform.endswith(a)), platform.rsplit("_", 1)[-1])
        env.update(
            sys_platform="linux", platform_system="Linux", os_name="posix",
            platform_machine=machine, implementation_name="cpython",
            platform_python_implementation="CPython", python_full_version=f"{python_minor}.0",
        )
    return env


def _pinned_closure(roots: Iterable[str], marker_env: dict[str, str]) -> tuple[str, ...]:
    """Pin `roots` and everything they need to the versions installed on this client."""
    pins: dict[str, str] = {}
    stack: list[Requirement] = [Requirement(r) for r in roots]
    while stack:
        req = stack.pop()
        key = canonicalize_name(req.name)
        if key in pins:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            raise ValueError(
                f"{req.name} is needed on the nodes but not installed on this client: "
                f"`pip install {req.name}` here, so the nodes can get the same version"
            ) from None
        if req.specifier and not req.specifier.contains(dist.version, prereleases=True):
            raise ValueError(
                f"{req} is asked for, but this client has {req.name} {dist.version}: "
                "the nodes run the client's versions, so upgrade it here first"
            )
        pins[key] = f"{dist.metadata['Name']}=={dist.version}"
        for spec in dist.requires or []:
            dep = Requirement(spec)
            if dep.marker is None or dep.marker.evaluate(marker_env):
                stack.append(dep)
    return tuple(sorted(pins.values(), key=str.lower))


def client_env_spec(
    extra_packages: Iterable[str] = (),
    remote_root: str = "/srv/provision",
    platform: str | None = None,
    python_source: PythonSource | None = None,
) -> EnvSpec:
    """The environment nodes need: this client's Python minor and package versions.

    `extra_packages` are requirement strings (e.g. from the cluster file's
    ``packages``); each must already be installed here, since its version is
    taken from this client. `platform`: the nodes' (`platform_for`).
    """
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    reqs = _pinned_closure([*BASE_PACKAGES, *extra_packages], _marker_env(minor, platform))
    return EnvSpec(
        python_minor=minor, requirements=reqs, remote_root=remote_root, platform=platform,
        python_source=python_source or PythonSource(),
    )


class _Session:
    """One connection per node, reopened once when the SSH link drops mid-stage.

    Every stage is idempotent (temp dirs renamed into place, ``uv venv --clear``,
    digest written last), so running one again after a drop is safe.
    """

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self.conn = connection(ep)

    def stage(self, what: str, fn: Callable[[fabric.Connection], T]) -> T:
        for attempt in (1, 2):
            try:
                return fn(self.conn)
            except NodeError:
                raise
            except TRANSIENT_ERRORS as e:
                self.conn.close()
                self.conn = connection(self.ep)
                if attempt == 2:
                    raise NodeError(
                        f"{self.ep.name} ({self.ep.host}): SSH failed twice during {what}: {e!r}",
                        node=self.ep.name, host=self.ep.host,
                    ) from e
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def _probe_script(spec: EnvSpec) -> str:
    root = shlex.quote(spec.remote_root)
    return "\n".join([
        # One interpreter start (pyenv shims cost ~0.3 s each); the real path, not a shim.
        "python3 -c 'import sys; print(\"minor=%d.%d\" % sys.version_info[:2]); "
        "print(\"python=\" + sys.executable)' 2>/dev/null",
        f"printf 'env=%s\\n' \"$(cat {root}/.env-digest 2>/dev/null)\"",
        f"printf 'wheels=%s\\n' \"$(cat {root}/wheels/.digest 2>/dev/null)\"",
        f"{root}/venv/bin/python -c '' 2>/dev/null && echo venv=ok || echo venv=",
        "",
    ])


def _parse(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def setup_node(
    ep: Endpoint, spec: EnvSpec, wheelhouse: Path, gate: PythonGate | None = None, *,
    fetch_wheels: Callable[[], bool] | None = None,
    on_wheels: Callable[[bool], None] | None = None,
    fetch_env: Callable[[fabric.Connection], bool] | None = None,
    on_env: Callable[[bool], None] | None = None,
) -> SetupResult:
    """Give the node a venv at ``{remote_root}/venv`` matching `spec`; skip if it has one.

    Stages: probe (Python minor, digest) -> push wheelhouse + uv (once per
    wheelhouse) -> interpreter: the image's ``python3`` if it is the client's
    minor, else ``uv python install`` (`provision.nodes.python`; `gate` shares
    the verdict between the nodes of one `up`) -> ``uv venv`` + ``uv pip
    install --no-index`` -> digest. The node needs no index, no pip and no
    python3-venv; ``python3`` of the client's minor only when it cannot download one.

    `fetch_wheels()` (a worker): get the wheelhouse from elsewhere (the master,
    `provision.nodes.relay`) instead of from this machine; False when it could not,
    and then this machine pushes it. `on_wheels(have)` (the master): called once the
    node holds this wheelhouse (True) or will not (False), so workers stop waiting.
    `fetch_env(conn)` (a worker): take the master's installed environment instead of
    installing (`provision.nodes.envcopy`, over the node's connection `conn`); False
    when it could not, and then the node installs. `on_env(have)` (the master): called
    once the node's environment is complete (True) or will not be (False).
    """
    start = time.monotonic()
    session = _Session(ep)
    root = shlex.quote(spec.remote_root)
    gate = gate or PythonGate()
    try:
        probe = _parse(session.stage("probe", lambda c: run(c, _probe_script(spec))))
        have = probe.get("minor", "")
        if probe.get("env") == spec.digest and probe.get("venv") == "ok":
            told(on_wheels, probe.get("wheels") == spec.digest)
            told(on_env, True)
            return SetupResult(ep.name, skipped=True, seconds=time.monotonic() - start)
        if have != spec.python_minor:
            gate.check(ep.name)  # another node already found the image cannot get one

        session.stage("mkdir", lambda c: run(c, own_dir(spec.remote_root)))
        if fetch_env is not None and session.stage("environment copy", fetch_env):
            return SetupResult(ep.name, skipped=False, seconds=time.monotonic() - start,
                               copied=True)
        if probe.get("wheels") != spec.digest and not (fetch_wheels and fetch_wheels()):
            def push(c: fabric.Connection) -> None:
                push_tree(c, wheelhouse, f"{spec.remote_root}/wheels")
                run(c, f"gzip -df {root}/wheels/{UV_GZ} && chmod 755 {root}/wheels/uv && "
                       f"printf %s {spec.digest} > {root}/wheels/.digest")
            session.stage("wheelhouse push", push)
        told(on_wheels, True)

        interpreter = probe.get("python", "")
        if have != spec.python_minor:
            with gate.turn(ep.name):
                interpreter = _managed_python(session, spec, have)

        wheels = f"{root}/wheels"
        reqs = " ".join(shlex.quote(r) for r in spec.requirements)
        install = "\n".join(
            [
                "set -e",
                f"rm -f {root}/.env-digest",  # a half-done install must never look complete
                "export UV_PYTHON_DOWNLOADS=never UV_NO_CONFIG=1 UV_NO_PROGRESS=1 "
                f"UV_CACHE_DIR={root}/uv-cache",
                f"{wheels}/uv venv --quiet --clear "
                f"--python {shlex.quote(interpreter)} {root}/venv",
                f"{wheels}/uv pip install --quiet --no-index --find-links {wheels} "
                f"--python {root}/venv/bin/python {reqs}",
                f"printf %s {spec.digest} > {root}/.env-digest.tmp && "
                f"mv {root}/.env-digest.tmp {root}/.env-digest",
            ]
        )
        session.stage("install", lambda c: run(c, install, timeout=INSTALL_TIMEOUT_S))
        told(on_env, True)
        return SetupResult(ep.name, skipped=False, seconds=time.monotonic() - start)
    finally:
        told(on_wheels, False)  # no-op once told; else whoever waits learns it will not come
        told(on_env, False)
        session.close()


def told(on_wheels: Callable[[bool], None] | None, have: bool) -> None:
    if on_wheels is not None:
        on_wheels(have)


def _managed_python(session: _Session, spec: EnvSpec, have: str) -> str:
    """Install CPython of the client's minor on the node; its path.

    `PythonUnavailable` when uv cannot get it (no route to the source, no such
    build): the same would happen on every node of the image.
    """
    ep, source = session.ep, spec.python_source
    script = python.install_script(spec.remote_root, spec.python_minor, source)
    try:
        out = session.stage("python install", lambda c: run(
            c, script, timeout=python.PYTHON_INSTALL_TIMEOUT_S))
    except NodeError as err:
        if err.command_status is None:  # SSH gave up, or a timeout: not a verdict on the image
            raise
        why = one_line_tail(err.stderr) or f"exit {err.command_status}"
        raise python.unavailable(
            ep.name, ep.host, have, spec.python_minor, source, why
        ) from err
    lines = out.strip().splitlines()
    if not lines:
        raise python.unavailable(ep.name, ep.host, have, spec.python_minor, source,
                                 "uv found no interpreter after installing one")
    return lines[-1].strip()

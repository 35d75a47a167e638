"""The wheelhouse: every pinned wheel (and uv) downloaded once, on the client.

Keyed by the environment's digest (`setup.EnvSpec`), so every node of every
cluster that runs the same versions gets the same directory, pushed once per
node as one tar stream. Wheels and uv are the nodes' platform's
(`EnvSpec.platform`), downloaded as binaries whatever this client runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from provision.nodes.setup import UV_GZ, EnvSpec, ProgressFn, builds_here

COMPLETE = ".complete"  # wheelhouse manifest, written last
PIP_TAIL_LINES = 15  # of pip's output, in the error when it fails


def default_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("provision")) / "wheelhouse"


def _platform_tags(platform: str) -> list[str]:
    """pip takes platform tags literally: spell out the older manylinux tags a node also runs."""
    if not platform.startswith("manylinux_2_"):
        return [platform]
    _, _, minor, arch = platform.split("_", 3)
    tags = [f"manylinux_2_{m}_{arch}" for m in range(int(minor), 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{arch}" for m, name in legacy.items() if int(minor) >= m]


def _pip(spec: EnvSpec, command: str, dest: Path, reqs: list[str]) -> list[str]:
    """``pip download`` of binary wheels for the nodes, or ``pip wheel`` (a build on
    this client, only where its wheels run on the nodes: see `setup.builds_here`)."""
    args = [sys.executable, "-m", "pip", command, "--no-deps", "--disable-pip-version-check",
            "--progress-bar", "off", "-d" if command == "download" else "-w", str(dest)]
    if command == "download":
        args.append("--only-binary=:all:")
        if spec.platform is not None:
            args += _target(spec.platform, spec.python_minor)
    return args + reqs


def _target(platform: str, python_minor: str | None) -> list[str]:
    """pip's flags for wheels of another platform (and CPython minor, when given)."""
    args = [f"--platform={t}" for t in _platform_tags(platform)]
    if python_minor is not None:
        nodot = python_minor.replace(".", "")
        args += ["--python-version", python_minor, "--implementation", "cp", "--abi", f"cp{nodot}"]
    return args


def _have(dest: Path) -> set[str]:
    names = set()
    for p in dest.glob("*.whl"):
        names.add(canonicalize_name(parse_wheel_filename(p.name)[0]))
    return names


def _missing(dest: Path, reqs: Iterable[str]) -> list[str]:
    have = _have(dest)
    return [r for r in reqs if canonicalize_name(Requirement(r).name) not in have]


def build_wheelhouse(
    spec: EnvSpec, cache_dir: Path | None = None, on_progress: ProgressFn | None = None
) -> Path:
    """Download every pinned wheel once, on the client, into ``cache_dir/<digest>/``.

    Reused as is when its manifest is complete. One ``pip download`` for all
    requirements (one resolver start, parallel-free but cache-friendly); only a
    requirement without a binary wheel falls back to ``pip wheel`` (which can
    build for this client's platform only). The uv binary goes next to the wheels.
    """
    root = cache_dir or default_cache_dir()
    dest = root / spec.digest
    if _is_complete(dest):
        return dest
    root.mkdir(parents=True, exist_ok=True)
    with _building(root / f"{spec.digest}.lock"):  # another process may be building it
        if _is_complete(dest):
            return dest
        return _build(spec, root, dest, on_progress)


@contextlib.contextmanager
def _building(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock across processes (two `up` at once, parallel tests)."""
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(spec: EnvSpec, root: Path, dest: Path, on_progress: ProgressFn | None) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f"{spec.digest}.", dir=root))
    try:
        reqs = list(spec.requirements)
        _stream_pip(_pip(spec, "download", tmp, reqs), len(reqs), on_progress)
        for req in _missing(tmp, reqs):  # one at a time, so one sdist-only package is found
            _stream_pip(_pip(spec, "download", tmp, [req]), len(reqs), None, check=False)
        for req in _missing(tmp, reqs):
            if not builds_here(spec.platform):
                raise RuntimeError(
                    f"no {spec.platform} wheel for {req}, and it cannot be built here"
                )
            _stream_pip(_pip(spec, "wheel", tmp, [req]), len(reqs), None)
        still = _missing(tmp, reqs)
        if still:
            raise RuntimeError(f"wheelhouse incomplete, no wheel for: {', '.join(still)}")
        _add_uv(spec, tmp)
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / COMPLETE).write_text(json.dumps({"digest": spec.digest, "files": files}))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _is_complete(dest: Path) -> bool:
    try:
        files = json.loads((dest / COMPLETE).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all((dest / f).exists() for f in files)


def _stream_pip(
    args: list[str], total: int, on_progress: ProgressFn | None, check: bool = True
) -> None:
    """Run pip, reporting each saved file, and keep its output for the error."""
    out: list[str] = []
    done = 0
    env = {**os.environ, "PIP_NO_INPUT": "1"}
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if line.startswith(("Saved ", "File was already downloaded ")):
                done += 1
                if on_progress:
                    on_progress(done, total, Path(line.split()[-1]).name)
    if check and proc.returncode != 0:
        tail = "".join(out[-PIP_TAIL_LINES:]).strip()
        raise RuntimeError(f"`{' '.join(args[:4])} ...` exited {proc.returncode}:\n{tail}")


def _add_uv(spec: EnvSpec, dest: Path) -> None:
    """Put a gzipped uv binary for the nodes' platform into the wheelhouse.

    This client's own when it runs on the nodes (uv's Linux binaries are static),
    else the same uv version's wheel for the nodes' platform, downloaded. Wheels
    are zip files already; the uv binary is not, and it is a third of the bytes
    every node receives.
    """
    if spec.platform is None or builds_here(spec.platform):
        import uv

        data = Path(uv.find_uv_bin()).read_bytes()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            args = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--disable-pip-version-check", "--progress-bar", "off", "-d", tmp,
                    *_target(spec.platform, None), f"uv=={md.version('uv')}"]
            _stream_pip(args, 1, None)
            (wheel,) = Path(tmp).glob("uv-*.whl")
            with zipfile.ZipFile(wheel) as z:
                member = next(n for n in z.namelist() if n.endswith("/scripts/uv"))
                data = z.read(member)
    (dest / UV_GZ).write_bytes(gzip.compress(data, compresslevel=1))

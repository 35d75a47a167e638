"""A host's root volume: what survives a stop, a reboot, and goes into a baked image.

On EC2 the root volume is EBS: stopping or rebooting an instance keeps it, and
CreateImage snapshots it. A simulated host keeps its per-host directories on
tmpfs inside its mount namespace, so whatever must outlive the host is copied
out with tar, read through /proc/<sshd>/root (the host's mounts, seen from
outside), and unpacked into the next host's tmpfs before its sshd starts:

- ``volumes/<instance id>.tar``: the disk of a stopped instance, or of one
  between the two halves of a reboot;
- ``snapshots/<snapshot id>.tar``: the content of an image's snapshot; an
  instance launched from that image starts with it.

What is captured is the host's root-volume directories (`PERSISTENT`: /srv,
/home, /root, /opt, /mnt, /media on an image's host; /srv alone on a root-login
host, which shares the rest with this machine). /tmp is not: Ubuntu empties it
at boot. Also here: shrinking a running host's /srv (`resize_srv`), so a test
can fill it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from provision.sim.hosts import STATE_ROOT, Host, SimError, run

VOLUMES = STATE_ROOT / "volumes"
SNAPSHOTS = STATE_ROOT / "snapshots"
PERSISTENT = ("srv", "home", "root", "opt", "mnt", "media")
_SIZE = re.compile(r"^(\d+)([kmg]?)$", re.IGNORECASE)


def volume_file(instance_id: str) -> Path:
    return VOLUMES / f"{instance_id}.tar"


def host_key(instance_id: str) -> Path:
    """The instance's sshd host key (on its root volume on EC2: it survives reboots and stops)."""
    return VOLUMES / f"{instance_id}.hostkey"


def snapshot_file(snapshot_id: str) -> Path:
    return SNAPSHOTS / f"{snapshot_id}.tar"


def root_of(host: Host) -> Path:
    """The host's / as its processes see it (its sshd stays alive until the host goes)."""
    if host.sshd_pid is None:
        raise SimError(f"host {host.name} has no live sshd to read its disk through")
    return Path(f"/proc/{host.sshd_pid}/root")


def capture(host: Host, out: Path) -> tuple[int, float]:
    """Copy the host's root-volume directories into the tar `out`; (bytes, seconds)."""
    root = root_of(host)
    dirs = [d for d in (("srv",) if host.user == "root" else PERSISTENT) if (root / d).is_dir()]
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_suffix(".part")
    start = time.monotonic()
    # --numeric-owner: the host's users are not this machine's; tar's exit 1 is
    # "a file changed as we read it", which a live capture may meet.
    proc = subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(part), *dirs],
                          capture_output=True, text=True)
    if proc.returncode > 1:
        part.unlink(missing_ok=True)
        raise SimError(f"capturing {host.name}'s disk failed: {proc.stderr.strip()}")
    os.replace(part, out)
    return out.stat().st_size, time.monotonic() - start


def empty(out: Path) -> None:
    """An empty disk image (an instance that never booted has nothing of its own)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    run("tar", "-cf", str(out), "--files-from", "/dev/null")


def gc(live_volumes: set[str], live_snapshots: set[str]) -> None:
    """Remove the files of instances and snapshots that no longer exist."""
    for folder, keep in ((VOLUMES, live_volumes), (SNAPSHOTS, live_snapshots)):
        for f in folder.iterdir() if folder.exists() else ():
            if f.name.split(".", 1)[0] not in keep:
                f.unlink(missing_ok=True)


def remove_all() -> None:
    for folder in (VOLUMES, SNAPSHOTS):
        shutil.rmtree(folder, ignore_errors=True)


def parse_size(size: str) -> int:
    """`5M`, `512k`, `1g`, `1048576` (tmpfs's units, powers of 1024) -> bytes."""
    m = _SIZE.match(size.strip())
    if not m or int(m.group(1)) == 0:
        raise SimError(f"--size {size!r}: expected a size such as 5M, 512k or 1G")
    return int(m.group(1)) * 1024 ** " kmg".index((m.group(2) or " ").lower())


def usage(host: Host) -> tuple[int, int]:
    """(size, used) of the host's /srv, in bytes."""
    st = os.statvfs(root_of(host) / "srv")
    return st.f_blocks * st.f_frsize, (st.f_blocks - st.f_bfree) * st.f_frsize


def resize_srv(host: Host, size: str) -> tuple[int, int]:
    """Remount the host's /srv with `size`, keeping its files; returns (size, used) bytes.

    A size below what /srv already holds is refused (tmpfs would refuse it too).
    """
    want = parse_size(size)
    _, used = usage(host)
    if want < used:
        raise SimError(f"/srv on {host.name} already holds {used} bytes, more than {size}")
    run("nsenter", "-t", str(host.sshd_pid), "-m", "mount", "-o", f"remount,size={want}", "/srv")
    return usage(host)

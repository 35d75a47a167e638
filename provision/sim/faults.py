"""Faults a test injects between this machine and the region: a cut link, a small disk.

- `cut(ID, seconds)`: the laptop-to-host path of one instance goes silent, as a
  home connection or an internet path does in an outage. Frames to and from the
  host's public address are dropped (no RST, no ICMP, no ARP failure): a new
  connection times out, an established one retransmits and survives a short cut.
  The host's private plane is untouched, so host-to-host traffic flows. With
  `seconds` the daemon heals it when they have passed; `heal(ID)` at any time.
- `disk(ID, size)`: the host's /srv (its data volume) shrinks to `size`, keeping
  its files, so writing past it fails with ENOSPC on the host. It lasts until the
  host restarts.

Both act on a running host at once (this process is root, as the daemon); the
cut is also written to ``cuts/<instance id>.json``, so the daemon keeps it in
force and lifts it on time.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from provision.sim import disks, hosts, net
from provision.sim.hosts import STATE_ROOT, SimError
from provision.sim.state import host_instance_id, running_state

CUTS = STATE_ROOT / "cuts"
HALTED = "halted"  # marker in a host's directory: `halt` ran on it (see `power`)


def host_for(instance_id: str) -> hosts.Host | None:
    return next((h for h in hosts.list_hosts() if host_instance_id(h.name) == instance_id), None)


def halted(host: hosts.Host) -> bool:
    return (host.dir / HALTED).exists()


def _live_host(instance_id: str) -> hosts.Host:
    running_state()
    host = host_for(instance_id)
    if host is None or host.sshd_pid is None:
        raise SimError(f"{instance_id} has no host: it is not running, or not booted yet")
    if halted(host):
        raise SimError(f"{instance_id} is halted: reboot or terminate it")
    return host


def _cut_file(instance_id: str) -> Path:
    return CUTS / f"{instance_id}.json"


def cut_until(instance_id: str) -> float | None:
    """When the instance's cut ends (epoch seconds; inf until healed); None if not cut."""
    try:
        until = json.loads(_cut_file(instance_id).read_text())["until"]
    except (OSError, ValueError, KeyError):
        return None
    return float("inf") if until is None else float(until)


def cut(instance_id: str, seconds: float | None = None) -> float:
    """Cut the laptop-to-host path of `instance_id`; returns when it heals (inf: never).

    An instance without a public address is not on that path (this machine
    reaches it through another host): cut that one instead.
    """
    if seconds is not None and seconds <= 0:
        raise SimError(f"--seconds {seconds:g}: must be more than 0")
    host = _live_host(instance_id)
    if not host.public_ip:
        raise SimError(f"{instance_id} has no public address: this machine reaches it only "
                       "through another host; cut that one")
    until = None if seconds is None else time.time() + seconds
    CUTS.mkdir(parents=True, exist_ok=True)
    tmp = _cut_file(instance_id).with_suffix(".tmp")
    tmp.write_text(json.dumps({"until": until}))
    tmp.replace(_cut_file(instance_id))
    net.block(host)
    return float("inf") if until is None else until


def heal(instance_id: str) -> bool:
    """Restore the instance's laptop-to-host path; False if it was not cut."""
    host = _live_host(instance_id)
    was = _cut_file(instance_id).exists()
    _cut_file(instance_id).unlink(missing_ok=True)
    net.unblock(host)
    return was


def disk(instance_id: str, size: str) -> tuple[int, int]:
    """Give the instance's host a /srv of `size` (e.g. "5M"); returns (size, used) bytes."""
    disks.parse_size(size)  # bad input first, whatever the region's state
    return disks.resize_srv(_live_host(instance_id), size)


def enforce_cuts(now: float | None = None) -> None:
    """Keep cuts in force (a rebooted host has new links) and lift those that are due."""
    now = time.time() if now is None else now
    for f in sorted(CUTS.glob("*.json")) if CUTS.exists() else ():
        host, until = host_for(f.stem), cut_until(f.stem)
        if host is None:  # the instance is gone
            f.unlink(missing_ok=True)
        elif until is not None and until <= now:
            f.unlink(missing_ok=True)
            if not halted(host):  # a halted host stays unreachable
                net.unblock(host)
        elif not net.blocked(host):
            net.block(host)


def remove_all() -> None:
    shutil.rmtree(CUTS, ignore_errors=True)

"""Shutting a host down from its own OS: `poweroff`, `shutdown`, `halt`, `reboot`.

On EC2 (see "Change instance initiated shutdown behavior" in AWS's docs):

- `poweroff`, `shutdown -h now`, `systemctl poweroff` stop the instance, or
  terminate it if it was launched with InstanceInitiatedShutdownBehavior
  `terminate`; a one-time spot instance is always terminated (it cannot be
  stopped). The instance goes `stopping`/`shutting-down`, then `stopped`/
  `terminated`, with the state reason `Client.InstanceInitiatedShutdown`;
- `shutdown` without a time waits a minute, as systemd's does (`+N` minutes,
  `HH:MM`, `now`); `shutdown -c` cancels;
- `halt` does not shut the instance down: the CPU halts and the instance keeps
  `running` (and billing), unreachable;
- `reboot` restarts the OS: processes end, disks stay, the instance stays `running`.

A host has no init system to ask, so the commands are one script (this
module's `SCRIPT`), laid over the host's /usr/sbin as systemctl and its links
poweroff, halt, reboot and shutdown (and over /usr/bin/systemctl): it checks
the caller is root (as systemd's polkit would refuse a plain user), then leaves
a request in the host's directory, which the daemon's watcher enacts (see
`watcher`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

REQUEST = "power.json"  # in the host's directory: {"action": ..., "at": epoch seconds}
ACTIONS = ("poweroff", "halt", "reboot")
COMMANDS = ("poweroff", "halt", "reboot", "shutdown")  # links to systemctl, as systemd has them

SCRIPT = r"""#!/bin/sh
# The host's systemctl/poweroff/halt/reboot/shutdown (provision.sim.power).
req=@REQUEST@
me=${0##*/}
act=poweroff
at=now
case "$me" in
  systemctl)
    case "$1" in
      poweroff|halt|reboot) act=$1 ;;
      *) echo "System has not been booted with systemd as init system (PID 1). Can't operate." >&2
         echo "Failed to connect to bus: Host is down" >&2; exit 1 ;;
    esac ;;
  halt) act=halt; for a; do case "$a" in -p|--poweroff) act=poweroff ;; esac; done ;;
  reboot) act=reboot ;;
  shutdown)
    at=+1
    for a; do case "$a" in
      -r|--reboot) act=reboot ;;
      -H|--halt) act=halt ;;
      -c) [ "$(id -u)" = 0 ] || { echo "Failed to cancel: Access denied" >&2; exit 1; }
          rm -f "$req"; exit 0 ;;
      now|+[0-9]*|[0-9]*:[0-9]*) at=$a ;;
    esac; done ;;
esac
if [ "$(id -u)" != 0 ]; then
  echo "Failed to $act system via logind: Interactive authentication required." >&2; exit 1
fi
now=$(date +%s)
case "$at" in
  now) when=$now ;;
  +*) when=$(( now + ${at#+} * 60 )) ;;
  *) when=$(date -d "$at" +%s) || exit 1; [ "$when" -ge "$now" ] || when=$(( when + 86400 )) ;;
esac
[ "$when" -gt "$now" ] &&
  echo "Shutdown scheduled for $(date -d "@$when"), use 'shutdown -c' to cancel."
printf '{"action": "%s", "at": %s}\n' "$act" "$when" > "$req.tmp" && mv "$req.tmp" "$req"
"""


def script(request_path: str) -> str:
    """The script for a host whose request file is at `request_path` (as the host sees it)."""
    return SCRIPT.replace("@REQUEST@", request_path)


def install(bin_dir: Path, request_path: str) -> None:
    """`bin_dir`: systemctl (the script) and its links, for the host's /usr/sbin."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "systemctl").write_text(script(request_path))
    (bin_dir / "systemctl").chmod(0o755)
    for name in COMMANDS:
        (bin_dir / name).unlink(missing_ok=True)
        (bin_dir / name).symlink_to("systemctl")


def due(host_dir: Path, now: float | None = None) -> str | None:
    """The action a host asked for, if its time has come (the request is then consumed)."""
    path = host_dir / REQUEST
    try:
        req = json.loads(path.read_text())
        action, at = str(req["action"]), float(req["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if at > (time.time() if now is None else now):
        return None
    path.unlink(missing_ok=True)
    return action if action in ACTIONS else None

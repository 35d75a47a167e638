"""Run ``ansible-playbook``: what the Ansible strategy drives, equal to the Fabric path.

``ansible/site.yml`` does what `provision.nodes.setup` and `provision.nodes.engines`
do, to the same layout on the node. This module runs it on an inventory dict
(`provision.inventory`), streams its progress, and turns the outcome into per-host
values as `fanout.on_hosts` does: the ``PLAY RECAP`` gives each host's counts, the
``fatal:``/``failed:`` lines the first error of each failed host, so the
orchestrator keeps the nodes that worked and names the ones that did not.

SSH: OpenSSH (Ansible's ``ssh`` connection) with the cluster's key and known_hosts;
one multiplexed connection per host, its control sockets in a private temporary
directory that is cleaned up after the run (EC2 reuses private addresses, so a
socket must never outlive its host).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.assets import ansible_dir
from provision.errors import ProvisionError, one_line_tail
from provision.inventory import render
from provision.nodes.remote import NodeError

PLAYBOOK = "site.yml"
PLAYBOOK_TIMEOUT_S = 3600  # a whole run, every host
GRACE_S = 10  # for ansible-playbook to stop after TERM, or an ssh master to exit
ProgressFn = Callable[[str, str], None]  # (host, what it is doing)

_RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+"
    r"failed=(?P<failed>\d+)(?:\s+skipped=(?P<skipped>\d+))?(?:\s+rescued=(?P<rescued>\d+))?"
    r"(?:\s+ignored=(?P<ignored>\d+))?"
)
_RESULT = re.compile(
    r"^(?P<status>ok|changed|skipping|fatal|failed|unreachable): "
    r"\[(?P<host>[^\]\s]+)(?: -> [^\]]+)?\]"
)
_FAILURE = re.compile(
    r"^(?:fatal|failed): \[(?P<host>[^\]\s]+)(?: -> [^\]]+)?\](?: \(item=.*?\))?"
    r"(?:: (?P<kind>FAILED|UNREACHABLE)!)? => (?P<body>\{.*)$"
)
_TASK = re.compile(r"^TASK \[(?P<task>.*)\] \**$")


class AnsibleError(ProvisionError):
    """ansible-playbook is missing, timed out, or failed before any host ran."""


@dataclass(frozen=True)
class HostRecap:
    """One line of ``PLAY RECAP``."""

    ok: int = 0
    changed: int = 0
    unreachable: int = 0
    failed: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0

    @property
    def succeeded(self) -> bool:
        return not (self.failed or self.unreachable)


@dataclass
class PlaybookResult:
    """What a playbook run did to each host."""

    recap: dict[str, HostRecap]
    errors: dict[str, str]  # host -> "task: message" of its first failure
    returncode: int
    seconds: float
    output: str = field(repr=False, default="")

    @property
    def changed(self) -> int:
        return sum(r.changed for r in self.recap.values())

    @property
    def failed_hosts(self) -> list[str]:
        hosts = {h for h, r in self.recap.items() if not r.succeeded} | set(self.errors)
        return sorted(hosts)

    def error_for(self, host: str, address: str = "") -> NodeError | None:
        """The host's failure as a `NodeError` naming it, or None when it succeeded."""
        if host not in self.failed_hosts and host in self.recap:
            return None
        where = f"{host} ({address})" if address else host
        if host not in self.recap and host not in self.errors:
            message = (
                f"{where}: not in the playbook's recap (ansible-playbook exited {self.returncode})"
            )
            tail = one_line_tail(self.output)
            return NodeError(message + (f": {tail}" if tail else ""), node=host, host=address)
        return NodeError(
            f"{where}: ansible: {self.errors.get(host, 'failed')}", node=host, host=address
        )


def find_playbook_command() -> str:
    """``ansible-playbook`` next to this Python first (the same venv), then on PATH."""
    sibling = Path(sys.executable).parent / "ansible-playbook"
    if sibling.exists():
        return str(sibling)
    found = shutil.which("ansible-playbook")
    if found is None:
        raise AnsibleError(
            "ansible-playbook not found: `pip install ansible-core` (provision's `ansible` extra) "
            "next to provision, or configure with Fabric (the default)"
        )
    return found


def parse_recap(output: str) -> dict[str, HostRecap]:
    """Host -> counts from the ``PLAY RECAP`` section of ansible-playbook's output."""
    recap: dict[str, HostRecap] = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        if in_recap:
            m = _RECAP.match(line.strip())
            if m:
                recap[m["host"]] = HostRecap(
                    **{k: int(v or 0) for k, v in m.groupdict().items() if k != "host"}
                )
    return recap


def parse_failures(output: str) -> dict[str, str]:
    """Host -> "task: message" of the first failed or unreachable task of each host."""
    errors: dict[str, str] = {}
    task = ""
    for line in output.splitlines():
        t = _TASK.match(line)
        if t:
            task = t["task"]
            continue
        m = _FAILURE.match(line)
        if not m or m["host"] in errors:
            continue
        message = _message(m["body"], m["kind"] or "FAILED")
        errors[m["host"]] = f"{task}: {message}" if task else message
    return errors


def _message(body: str, kind: str) -> str:
    """The useful part of a result: msg, then the stderr tail and exit code of a command."""
    try:
        result = json.loads(body)
    except ValueError:
        return body.strip()[:400]
    if not isinstance(result, dict):
        return str(result)[:400]
    parts = []
    msg = str(result.get("msg", "")).strip()
    if msg and msg != "non-zero return code":
        parts.append(msg)
    if "rc" in result and kind == "FAILED":
        parts.append(f"exit {result['rc']}")
    stderr = one_line_tail(str(result.get("stderr", "") or result.get("module_stderr", "")))
    if stderr:
        parts.append(stderr)
    if not parts:
        parts.append(kind.lower())
    return ": ".join(parts)[:600]


def _env(control_dir: str, config: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(config),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_STDOUT_CALLBACK="default",
        ANSIBLE_SSH_CONTROL_PATH_DIR=control_dir,
        # One JSON line per failed result: parse_failures reads it back.
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_CALLBACK_FORMAT_PRETTY="0",
        PYTHONUNBUFFERED="1",
    )
    if "utf" not in (env.get("LC_ALL") or env.get("LANG") or "").lower().replace("-", ""):
        env["LC_ALL"] = "C.UTF-8"  # ansible refuses to start without a UTF-8 locale
    return env


def _close_control_sockets(control_dir: str) -> None:
    """Stop the multiplexing masters of this run, then remove their directory."""
    for sock in Path(control_dir).iterdir() if Path(control_dir).exists() else []:
        subprocess.run(
            ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "provision-ansible"],
            capture_output=True, timeout=GRACE_S, check=False,
        )
    shutil.rmtree(control_dir, ignore_errors=True)


def run_playbook(
    inventory: dict[str, Any],
    *,
    playbook: str | Path = PLAYBOOK,
    on_progress: ProgressFn | None = None,
    timeout: float = PLAYBOOK_TIMEOUT_S,
) -> PlaybookResult:
    """Run `playbook` (relative to `ansible_dir()`) on `inventory` and return per-host results.

    Never raises for a host that failed: its error is in the result (see
    `PlaybookResult.error_for`). Raises `AnsibleError` when ansible-playbook is
    missing or quits before any host ran (e.g. a syntax error), with its output's tail.
    """
    command = find_playbook_command()
    root = ansible_dir()
    book = Path(playbook) if Path(playbook).is_absolute() else root / playbook
    started = time.monotonic()
    # Short: a control socket path must fit in 108 bytes.
    control_dir = tempfile.mkdtemp(prefix="pa-", dir="/tmp")
    fd, inv_path = tempfile.mkstemp(prefix="provision-inventory-", suffix=".yml")
    lines: list[str] = []
    try:
        with os.fdopen(fd, "w") as f:
            f.write(render(inventory, "yaml"))
        args = [command, "-i", inv_path, str(book)]
        task = ""
        with subprocess.Popen(
            args, cwd=root, env=_env(control_dir, root / "ansible.cfg"), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        ) as proc:
            timed_out = threading.Event()

            def expire() -> None:
                timed_out.set()
                proc.kill()

            watchdog = threading.Timer(timeout, expire)
            watchdog.daemon = True
            watchdog.start()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    lines.append(line)
                    if on_progress is None:
                        continue
                    t = _TASK.match(line.rstrip())
                    if t:
                        task = t["task"].split(" : ", 1)[-1]
                        continue
                    m = _RESULT.match(line)
                    if m and task:
                        on_progress(m["host"], f"ansible: {task} ({m['status']})")
                proc.wait()
            except BaseException:  # Ctrl-C: do not leave it configuring behind our back
                proc.terminate()
                try:
                    proc.wait(timeout=GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise
            finally:
                watchdog.cancel()
            if timed_out.is_set():
                tail = one_line_tail("".join(lines), 5)
                raise AnsibleError(f"ansible-playbook ran for more than {timeout:.0f}s: {tail}")
    finally:
        os.unlink(inv_path)
        _close_control_sockets(control_dir)
    output = "".join(lines)
    recap = parse_recap(output)
    if not recap and proc.returncode != 0:
        tail = one_line_tail(output, 8)
        raise AnsibleError(f"ansible-playbook exited {proc.returncode} before any host ran: {tail}")
    return PlaybookResult(
        recap=recap, errors=parse_failures(output), returncode=proc.returncode,
        seconds=time.monotonic() - started, output=output,
    )


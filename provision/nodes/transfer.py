"""Bulk transfers to a node: a directory as one tar stream, through ssh(1) when there is one.

Per-file SFTP pays a round trip per request; one ``tar x`` stream keeps the link
full. The OpenSSH client, when installed, carries the stream with the same key,
user and per-cluster host keys as the Fabric connection (its ciphers run in C,
outside this process's GIL); paramiko is the fallback.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import fabric

from provision.nodes.remote import Borrowed, Endpoint, NodeError, host_known

PUSH_TIMEOUT_S = 600  # one push, wheelhouse or data splits, before it is killed
CHANNEL_WINDOW = 1 << 24  # 16 MiB instead of paramiko's 2 MiB keeps long, fat links busy
CHANNEL_OPEN_TIMEOUT_S = 30
TAR_BUFFER = 1 << 16


def push_tree(
    target: Endpoint | fabric.Connection,
    local_dir: Path,
    remote_dir: str,
    *,
    unless_exists: str | None = None,
    timeout: float | None = PUSH_TIMEOUT_S,
    on_bytes: Callable[[int], None] | None = None,
    verify: dict[str, str] | None = None,
    need_bytes: int | None = None,
    on_resend: Callable[[], None] | None = None,
) -> int | None:
    """Stream `local_dir` to `remote_dir` as one uncompressed tar; return the bytes sent.

    Per-file SFTP pays a round trip per request; one ``tar x`` stream keeps the
    link full. No compression: wheels are already zip files. The tree lands in
    a sibling temp dir and is renamed into place, so an interrupted push never
    looks complete. If the remote path ``unless_exists`` exists, nothing is
    sent and None is returned (same connection, no extra round trip).

    The bytes go through the OpenSSH client when there is one (its ciphers run
    in C, outside this process's GIL, so pushes to many nodes at once scale
    with cores; paramiko tops out at one core for all of them, and its
    handshake alone costs more CPU than ssh's), with the same key, user and
    per-cluster host keys; else through paramiko. ``on_bytes(n)`` is called as
    data leaves.

    `verify` (file name -> sha256): ``unless_exists`` counts only when the files
    there have these hashes; otherwise the directory is removed and sent again,
    and ``on_resend()`` is called (a flipped byte is never silently kept).
    `need_bytes`: checked against the free space next to `remote_dir` (``df``,
    same connection) before a byte is sent; `NoSpace` when short, and also when
    the disk fills mid-stream (the partial copy is removed).
    """
    script, cmd = receive_script(remote_dir, unless_exists, verify, need_bytes)

    def have(ep: Endpoint, line: bytes) -> bool:
        return answer(ep, line, remote_dir, need_bytes, on_resend)

    def fail(ep: Endpoint, code: int | None, stderr: str, what: str = "") -> NodeError:
        return failure(ep, cmd, code, stderr, remote_dir, need_bytes, what)

    return send_tree(target, local_dir, script, have, fail, timeout=timeout,
                     on_bytes=on_bytes)[0]


def send_tree(
    target: Endpoint | fabric.Connection,
    local_dir: Path,
    script: str,
    have: Callable[[Endpoint, bytes], bool],
    fail: Callable[..., NodeError],
    *,
    timeout: float | None = PUSH_TIMEOUT_S,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[int | None, bytes]:
    """Run `script` on `target`; unless ``have(ep, first line)``, stream `local_dir` into it
    as one tar. (bytes sent, or None when nothing was; the rest of the script's stdout).

    The carrier of `push_tree` and of the master's streaming relay (`provision.nodes.stream`):
    ssh(1) when there is one, else paramiko. ``fail(ep, code, stderr, what)`` makes the
    error raised when the script exits non-zero.
    """
    with Borrowed(target) as b:
        argv = _openssh_argv(b.ep, script)
        if argv is not None:
            if not all(host_known(hop) for hop in _hops(b.ep)):
                b.conn.open()  # trust on first use records the keys that ssh(1) then checks
            return _push_openssh(argv, local_dir, timeout, on_bytes, partial(have, b.ep),
                                 partial(fail, b.ep))
        b.conn.open()
        chan = b.conn.transport.open_session(
            window_size=CHANNEL_WINDOW, timeout=CHANNEL_OPEN_TIMEOUT_S
        )
        chan.settimeout(timeout)
        chan.exec_command(script)
        out = chan.makefile("rb")
        if have(b.ep, out.readline()):
            rest = out.read()
            chan.recv_exit_status()
            chan.close()
            return None, rest
        sink = _CountingWriter(chan.sendall, on_bytes)
        try:
            _write_tar(sink, local_dir)
            chan.shutdown_write()
        except OSError:
            pass  # the remote end quit early; its exit code and stderr say why
        rest = out.read()
        stderr = chan.makefile_stderr("rb").read()
        code = chan.recv_exit_status()
        chan.close()
        if code != 0:
            raise fail(b.ep, code, stderr.decode(errors="replace"))
        return sink.count, rest


def own_dir(path: str) -> str:
    """Shell making `path` a directory the login user writes to (with sudo when its
    parent, e.g. /srv, belongs to root, as on a fresh image)."""
    d = shlex.quote(path)
    return (f"{{ mkdir -p {d} 2>/dev/null && test -w {d}; }} || "
            f"{{ sudo -n mkdir -p {d} && sudo -n chown \"$(id -u):$(id -g)\" {d}; }}")


def receive_script(
    remote_dir: str, unless_exists: str | None, verify: dict[str, str] | None,
    need_bytes: int | None, *, check: bool = False,
) -> tuple[str, str]:
    """The node's side of a push: (whole script, the part that receives the tar).

    The script first answers in one line (see `_preamble`), then unpacks stdin
    into a sibling temp dir renamed into place. `check`: the unpacked files must
    have the `verify` hashes before the rename (a relayed copy is proven intact
    where it lands, whatever the pipe in between did).
    """
    tmp = f"{remote_dir}.tmp"
    q = shlex.quote
    proof = ""
    if check and verify:
        sums = " ".join(q(f"{digest}  {name}") for name, digest in sorted(verify.items()))
        proof = (f"{{ (cd {q(tmp)} && printf '%s\\n' {sums} | sha256sum -c --status -) || "
                 f"{{ rm -rf {q(tmp)}; echo 'received files fail their hashes' >&2; exit 3; }}; }}"
                 " && ")
    cmd = (
        f"rm -rf {q(tmp)} && mkdir -p {q(tmp)} && "
        f"{{ tar -x -f - -C {q(tmp)} || {{ s=$?; rm -rf {q(tmp)}; exit $s; }}; }} && "
        f"{proof}rm -rf {q(remote_dir)} && mv {q(tmp)} {q(remote_dir)}"
    )
    return f"{_preamble(remote_dir, unless_exists, verify, need_bytes)}; {cmd}", cmd


class NoSpace(NodeError):
    """A node's disk cannot hold what is being sent: one line with the bytes needed."""


def _preamble(
    remote_dir: str, unless_exists: str | None, verify: dict[str, str] | None,
    need_bytes: int | None,
) -> str:
    """The shell that answers first, in one line: ``have`` (nothing to send), ``send``,
    ``resend`` (it was there but failed its hashes: removed) or ``nospace FREE``."""
    q = shlex.quote
    parts = []
    if unless_exists:
        there = f"[ -e {q(unless_exists)} ]"
        if verify:
            sums = " ".join(q(f"{digest}  {name}") for name, digest in sorted(verify.items()))
            intact = f"(cd {q(remote_dir)} && printf '%s\\n' {sums} | sha256sum -c --status -)"
            parts += [f"if {there} && {intact}; then echo have; exit 0; fi",
                      f"again=; if {there}; then rm -rf {q(remote_dir)}; again=re; fi"]
        else:
            parts.append(f"if {there}; then echo have; exit 0; fi")
    if need_bytes:
        parent = posixpath.dirname(remote_dir.rstrip("/")) or "/"
        parts += [f"rm -rf {q(remote_dir + '.tmp')}; mkdir -p {q(parent)}",
                  f"free=$(( $(df -Pk {q(parent)} | awk 'NR==2 {{print $4}}') * 1024 ))",
                  f'if [ "$free" -lt {need_bytes} ]; then echo "nospace $free"; exit 0; fi']
    parts.append('echo "${again}send"' if verify and unless_exists else "echo send")
    return "; ".join(parts)


def answer(
    ep: Endpoint, line: bytes, remote_dir: str, need: int | None,
    on_resend: Callable[[], None] | None,
) -> bool:
    """Whether the node already has the tree (see `_preamble`); NoSpace when it cannot."""
    word, _, rest = line.decode(errors="replace").strip().partition(" ")
    if word == "nospace":
        raise NoSpace(
            f"{ep.name} ({ep.host}): not enough disk for {remote_dir}: needs {need} bytes, "
            f"has {rest} free; free space there (or use a bigger volume), then run the same "
            "command again", node=ep.name, host=ep.host,
        )
    if word == "resend" and on_resend is not None:
        on_resend()
    return word == "have"


def failure(
    ep: Endpoint, cmd: str, code: int | None, stderr: str, remote_dir: str,
    need_bytes: int | None, what: str = "",
) -> NodeError:
    """The push's error: NoSpace when the disk filled mid-stream, else the command's."""
    if "No space left on device" in stderr:
        need = f"needs {need_bytes} bytes" if need_bytes else "needs more space"
        return NoSpace(
            f"{ep.name} ({ep.host}): disk full while writing {remote_dir} ({need}; the partial "
            "copy was removed); free space there (or use a bigger volume), then run the same "
            "command again", node=ep.name, host=ep.host, command=cmd, command_status=code,
            stderr=stderr,
        )
    return NodeError.from_command(ep, cmd, code, stderr, what=what)


def _write_tar(sink: io.RawIOBase, local_dir: Path) -> None:
    with tarfile.open(fileobj=sink, mode="w|", bufsize=TAR_BUFFER) as tar:
        for path in sorted(local_dir.iterdir()):
            tar.add(str(path), arcname=path.name)


def _hops(ep: Endpoint) -> list[Endpoint]:
    """The node and the hosts it is reached through, nearest last."""
    return [ep] + (_hops(ep.via) if ep.via is not None else [])


def ssh_options(
    ep: Endpoint, *, batch: bool = True, accept_new: bool = False
) -> list[str] | None:
    """ssh(1) options reaching `ep` exactly as `remote.connection(ep)` does (same key,
    user, per-cluster host keys, and the jump host through a ProxyCommand that
    carries the same options), or None when there is no ssh client or `ep`
    records no host keys to check the node against.

    ``-F /dev/null`` and the options below keep the user's ssh config, agent and
    default keys out of it, as the paramiko path does. `batch=False` is for an
    interactive session; `accept_new` records an unknown host key (as Fabric's
    trust on first use does) instead of refusing it.
    """
    ssh = shutil.which("ssh")
    if ssh is None or ep.known_hosts is None:
        return None
    opts = {
        "IdentitiesOnly": "yes", "IdentityAgent": "none",
        "UserKnownHostsFile": str(ep.known_hosts), "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "accept-new" if accept_new else "yes",
        "ConnectTimeout": "30", "ServerAliveInterval": "15", "ServerAliveCountMax": "4",
    }
    if batch:
        opts.update(BatchMode="yes", LogLevel="ERROR")
    argv = ["-F", "/dev/null", "-p", str(ep.port), "-i", str(ep.key_path), "-l", ep.user]
    for key, value in opts.items():
        argv += ["-o", f"{key}={value}"]
    if ep.via is not None:
        proxy = proxy_command(ep.via, accept_new=accept_new)
        if proxy is None:
            return None
        argv += ["-o", f"ProxyCommand={proxy}"]
    return argv


def proxy_command(via: Endpoint, *, accept_new: bool = False) -> str | None:
    """OpenSSH's ProxyCommand that jumps through `via` with `ssh_options` (a plain
    ``-J`` would drop the key and known_hosts options at the jump host)."""
    hop = ssh_options(via, accept_new=accept_new)
    ssh = shutil.which("ssh")
    if hop is None or ssh is None:
        return None
    return shlex.join([ssh, *hop, "-W", "%h:%p", via.host])


def ssh_argv(
    ep: Endpoint, command: str | None = None, *, batch: bool = True, accept_new: bool = False
) -> list[str] | None:
    """The ssh(1) command line running `command` on `ep` (a shell when None); see
    `ssh_options`."""
    opts = ssh_options(ep, batch=batch, accept_new=accept_new)
    if opts is None:
        return None
    ssh = shutil.which("ssh") or "ssh"
    return [ssh, *opts, *(["-T"] if command is not None else []), ep.host,
            *([command] if command is not None else [])]


def _openssh_argv(ep: Endpoint, command: str) -> list[str] | None:
    """ssh(1) running `command` on `ep` for a push, or None (see `ssh_options`)."""
    return ssh_argv(ep, command)


def _push_openssh(
    argv: list[str], local_dir: Path, timeout: float | None,
    on_bytes: Callable[[int], None] | None, have: Callable[[bytes], bool],
    fail: Callable[..., NodeError],
) -> tuple[int | None, bytes]:
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        killer = threading.Timer(timeout, proc.kill) if timeout else None
        if killer is not None:
            killer.daemon = True
            killer.start()
        assert proc.stdin is not None and proc.stdout is not None
        sink = _CountingWriter(proc.stdin.write, on_bytes)
        try:
            try:
                if have(proc.stdout.readline()):
                    sink = None
                else:
                    _write_tar(sink, local_dir)
            except OSError:
                pass  # ssh or the remote tar quit early; its exit code and stderr say why
            finally:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            rest = proc.stdout.read()
            code = proc.wait()
        finally:  # `have` may refuse (no space): never leave ssh running or a zombie
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
            if killer is not None:
                killer.cancel()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if code != 0:
        what = f"timed out after {timeout:.0f}s" if code == -signal.SIGKILL else ""
        raise fail(code, stderr, what)
    return (None if sink is None else sink.count), rest


class _CountingWriter(io.RawIOBase):
    """File-like sink for tarfile: hands bytes to `send`, counts them, reports progress."""

    def __init__(self, send: Callable[[Any], Any], on_bytes: Callable[[int], None] | None) -> None:
        self.send, self.on_bytes, self.count = send, on_bytes, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.send(data)
        n = len(data)
        self.count += n
        if self.on_bytes is not None:
            self.on_bytes(n)
        return n

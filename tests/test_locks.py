"""One command at a time per cluster: real processes contending for its lock.

Every contender is a separate process (the lock is an `flock`, which threads of
one process would share); the tests wait for what each prints, never for time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import CONFIG
from waits import Lines, wait_for

from provision import locks, state

EXE = Path(sys.executable).parent / "provision"  # the console script a wheel install gives

# Holds cluster argv[1]'s lock as `up` until stdin closes; says "held" or the refusal.
HOLDER = textwrap.dedent("""\
    import sys
    from provision import locks
    try:
        with locks.cluster_lock(sys.argv[1], "up"):
            print("held", flush=True)
            sys.stdin.read()
    except locks.ClusterBusy as e:
        print(f"busy: {e}", flush=True)
""")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A private state dir, and an AWS that refuses at once: a command that got past
    the lock would fail on its first request instead of refusing."""
    return dict(
        os.environ, PROVISION_STATE_DIR=str(tmp_path / "state"), HOME=str(tmp_path),
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL="http://127.0.0.1:9",
        AWS_MAX_ATTEMPTS="1",
    )


class Holder:
    """A process holding (or refused) a cluster's lock."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=env,
        )
        self.out = Lines(self.proc.stdout)  # type: ignore[arg-type]

    def outcome(self) -> str:
        return wait_for(lambda: next(iter(self.out.lines), ""), 60, "held or busy")

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=30)


@pytest.fixture
def holders(env: dict[str, str]) -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for h in made:
        if h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait()


def test_of_four_processes_racing_for_a_cluster_exactly_one_holds_it(env, holders):
    holders.extend(Holder("unit", env) for _ in range(4))
    outcomes = [h.outcome() for h in holders]
    assert outcomes.count("held") == 1, outcomes
    held = holders[outcomes.index("held")]
    refused = [o for o in outcomes if o != "held"]
    assert all(o.startswith("busy:") and f"(pid {held.proc.pid}," in o for o in refused), outcomes


def test_every_changing_command_refuses_in_one_line_while_up_holds_the_cluster(
    env, holders, tmp_path
):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(CONFIG.format(key=key))
    holder = Holder("unit", env)
    holders.append(holder)
    assert holder.outcome() == "held"
    c = ["--config", str(cfg)]
    commands = (["up", *c], ["down", "unit", "--yes", *c], ["addnode", "unit", *c],
                ["removenode", "unit", "unit-node001", *c])
    running = [subprocess.Popen([str(EXE), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, stdin=subprocess.DEVNULL) for args in commands]
    for args, proc in zip(commands, running):
        _, stderr = proc.communicate(timeout=120)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert proc.returncode == 1, (args, stderr)
        assert len(lines) == 1 and "Traceback" not in stderr, (args, stderr)
        assert (f"cluster 'unit' is busy: `provision up` (pid {holder.proc.pid}, since"
                in lines[0]), (args, lines)
        assert "wait for it to finish" in lines[0]
    watching = subprocess.run(
        [str(EXE), "watch", "unit", "--interval", "1", "--timeout", "1", *c], env=env,
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
    )
    assert watching.returncode == 0, watching.stderr  # a long watch skips a busy round
    assert "is busy" in watching.stderr and "checking again in 1 s" in watching.stderr
    assert not (Path(env["PROVISION_STATE_DIR"]) / "clusters").exists()  # nothing recorded


def test_a_released_or_killed_holder_frees_the_cluster_and_leaves_no_lock_file(env, holders):
    first = Holder("unit", env)
    holders.append(first)
    assert first.outcome() == "held"
    first.release()
    assert not (Path(env["PROVISION_STATE_DIR"]) / "locks" / "unit.lock").exists()
    second = Holder("unit", env)
    holders.append(second)
    assert second.outcome() == "held"
    second.proc.send_signal(signal.SIGKILL)  # a crash: the kernel drops its lock
    second.proc.wait(timeout=30)
    third = Holder("unit", env)
    holders.append(third)
    assert third.outcome() == "held"


def test_other_clusters_are_not_held_up(env, holders):
    holders.extend([Holder("one", env), Holder("two", env)])
    assert [h.outcome() for h in holders] == ["held", "held"]


def test_down_forgetting_the_cluster_keeps_its_lock_held(env, holders, tmp_path, monkeypatch):
    monkeypatch.setenv("PROVISION_STATE_DIR", env["PROVISION_STATE_DIR"])
    with locks.cluster_lock("unit", "down"):
        state.update("unit", name="unit")
        state.forget("unit")  # what `down` does at its end, lock still held
        other = Holder("unit", env)
        holders.append(other)
        assert other.outcome().startswith("busy: cluster 'unit' is busy: `provision down`")


def test_the_lock_is_reentrant_so_watch_can_add_nodes_under_it(
    env, holders, tmp_path, monkeypatch
):
    """keep_size (watch) calls addnode, both locked: the inner one must not refuse
    its own process; the lock goes only when the outer one returns."""
    monkeypatch.setenv("PROVISION_STATE_DIR", env["PROVISION_STATE_DIR"])
    seen: list[str] = []

    @locks.exclusive("addnode")
    def inner(name: str) -> None:
        seen.append(name)

    @locks.exclusive("watch")
    def outer(name: str) -> None:
        inner(name)
        other = Holder("unit", env)
        holders.append(other)
        seen.append(other.outcome())

    outer("unit")
    assert seen[0] == "unit" and "`provision watch`" in seen[1], seen
    assert not locks.lock_path("unit").exists()
    after = Holder("unit", env)
    holders.append(after)
    assert after.outcome() == "held"


"""One function per node at once (`provision.nodes.fanout`): every node's outcome is kept,
one node's error never hides the others, and the caller waits on futures, not a poll."""

from __future__ import annotations

import threading

import pytest

from provision.nodes.fanout import GroupError, fan_out, in_background


def test_every_item_gets_its_value_or_its_exception():
    def half(n: int) -> float:
        return 1 / (n - 2) if n else n

    result = fan_out(half, [0, 2, 4], key=str)

    assert result.succeeded == {"0": 0, "4": 0.5}
    assert set(result.failed) == {"2"} and isinstance(result["2"], ZeroDivisionError)
    with pytest.raises(GroupError, match="1 of 3 nodes failed: 2: division by zero"):
        result.raise_for_failures()


def test_calls_run_at_once_so_one_may_wait_for_another():
    started = threading.Event()

    def step(name: str) -> str:
        if name == "worker":
            assert started.wait(timeout=10), "the master never started: calls ran one by one"
        else:
            started.set()
        return name

    assert fan_out(step, ["worker", "master"], key=str).succeeded == {
        "worker": "worker", "master": "master",
    }


def test_a_limit_caps_the_calls_running_at_a_time():
    running, peak, lock = [0], [0], threading.Lock()
    gate = threading.Barrier(2, timeout=10)

    def call(n: int) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        if n < 2:
            gate.wait()  # the first two meet, so two really ran together
        with lock:
            running[0] -= 1

    fan_out(call, list(range(6)), key=str, limit=2).raise_for_failures()
    assert peak[0] == 2


def test_names_must_be_unique():
    with pytest.raises(ValueError, match="unique"):
        fan_out(str, [1, 1], key=str)


def test_an_exit_that_is_not_an_error_still_propagates():
    def leave(n: int) -> None:
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        fan_out(leave, [1], key=str)


def test_a_background_call_hands_its_exception_to_whoever_waits():
    future = in_background(lambda: 1 / 0, name="doomed")
    with pytest.raises(ZeroDivisionError):
        future.result(timeout=10)

"""The shared backoff: capped doubling delays; only the named (transient) errors retried."""

from __future__ import annotations

import time

import pytest

from funnelstream.backoff import Backoff, BackoffPolicy, retry_forever


class Transient(Exception):
    pass


def test_delays_double_from_the_initial_up_to_the_cap() -> None:
    policy = BackoffPolicy(0.2, 1.0)
    assert [policy.delay(n) for n in range(1, 6)] == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0])
    assert policy.delay(10_000) == 1.0  # no overflow after a long outage


async def test_transient_errors_are_retried_until_the_call_succeeds() -> None:
    policy = BackoffPolicy(0.01, 0.02)
    calls = 0
    retries: list[float] = []

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise Transient(f"attempt {calls}")
        return "done"

    started = time.monotonic()
    got = await retry_forever(policy, "flaky", flaky, Transient, lambda _, d: retries.append(d))
    assert got == "done" and calls == 4
    assert retries == pytest.approx([0.01, 0.02, 0.02])
    assert time.monotonic() - started >= 0.05


async def test_a_lambda_returning_a_coroutine_is_awaited() -> None:
    async def answer(n: int) -> int:
        return n

    assert await retry_forever(BackoffPolicy(), "lambda", lambda: answer(7), Transient) == 7


async def test_other_errors_propagate_at_once() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        await retry_forever(BackoffPolicy(0.01, 0.02), "broken", broken, Transient)
    assert calls == 1


def test_the_gate_is_due_after_the_delay_and_grows_until_reset() -> None:
    gate = Backoff(BackoffPolicy(0.05, 0.1))
    assert gate.due() and gate.delay == pytest.approx(0.05)
    gate.failed()
    assert not gate.due() and gate.delay == pytest.approx(0.1)
    time.sleep(0.06)
    assert gate.due()
    gate.failed()
    gate.failed()
    assert gate.delay == pytest.approx(0.1)  # capped
    gate.reset()
    assert gate.due() and gate.delay == pytest.approx(0.05)

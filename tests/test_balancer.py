"""The gateway's replica choice, as pure logic: tiers, draining, passive health, policies.

The clock is the module's ``time.monotonic``, replaced by a settable one so down marks can
expire without waiting.
"""

from __future__ import annotations

from collections import Counter

import pytest

from activities.platform.local import balancer as balancer_module
from activities.platform.local.balancer import DOWN_SECONDS, Balancer, Target, Upstream


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(balancer_module.time, "monotonic", c)
    return c


def up(i: int, *, draining: bool = False) -> Upstream:
    return Upstream(f"http://127.0.0.1:{18000 + i}", i, "v1", 100 + i, draining=draining)


def target(*upstreams: Upstream) -> Target:
    return Target("a", "blue", upstreams)


def ready(b: Balancer, *upstreams: Upstream) -> None:
    for u in upstreams:
        b.set_ready(u, True)


def test_round_robin_rotates_over_ready_replicas(clock: Clock) -> None:
    b, (u0, u1, u2) = Balancer("round_robin"), (up(0), up(1), up(2))
    ready(b, u0, u1, u2)
    picks = [b.pick(target(u0, u1, u2), set()) for _ in range(6)]
    assert picks == [u0, u1, u2, u0, u1, u2]


def test_turns_are_per_agent_and_colour(clock: Clock) -> None:
    b, (u0, u1) = Balancer("round_robin"), (up(0), up(1))
    ready(b, u0, u1)
    blue, green = target(u0, u1), Target("a", "green", (u0, u1))
    assert [b.pick(blue, set()), b.pick(green, set()), b.pick(blue, set())] == [u0, u0, u1]


def test_starting_and_draining_replicas_get_nothing(clock: Clock) -> None:
    b = Balancer("round_robin")
    starting, draining, serving = up(0), up(1, draining=True), up(2)
    ready(b, draining, serving)
    t = target(starting, draining, serving)
    assert {b.pick(t, set()) for _ in range(5)} == {serving}
    assert b.starting(t) == 1
    assert b.pick(target(starting), set()) is None
    assert b.pick(target(draining), set()) is None


def test_excluded_replicas_are_skipped(clock: Clock) -> None:
    b, (u0, u1) = Balancer("round_robin"), (up(0), up(1))
    ready(b, u0, u1)
    assert b.pick(target(u0, u1), {u0.url}) == u1
    assert b.pick(target(u0, u1), {u0.url, u1.url}) is None


def test_tiers_ready_then_established_then_down(clock: Clock) -> None:
    b, (u0, u1) = Balancer("round_robin"), (up(0), up(1))
    ready(b, u0, u1)
    b.set_ready(u1, False)  # failed its probes, but served before: established
    t = target(u0, u1)
    assert {b.pick(t, set()) for _ in range(4)} == {u0}  # tier 1: ready and up
    b.mark_down(u0)
    assert {b.pick(t, set()) for _ in range(4)} == {u1}  # tier 2: established and up
    b.mark_down(u1)
    assert {b.pick(t, set()) for _ in range(4)} == {u0, u1}  # tier 3: established, even down


def test_down_marks_expire_after_down_seconds(clock: Clock) -> None:
    b, (u0, u1) = Balancer("round_robin"), (up(0), up(1))
    ready(b, u0, u1)
    b.mark_down(u0)
    assert b.describe(u0).down and b.describe(u0).failures == 1
    clock.now += DOWN_SECONDS - 0.01
    assert {b.pick(target(u0, u1), set()) for _ in range(4)} == {u1}
    clock.now += 0.02
    assert not b.describe(u0).down
    assert {b.pick(target(u0, u1), set()) for _ in range(4)} == {u0, u1}


def test_least_connections_prefers_the_idle_replica_and_rotates_ties(clock: Clock) -> None:
    b, (u0, u1, u2) = Balancer("least_connections"), (up(0), up(1), up(2))
    ready(b, u0, u1, u2)
    t = target(u0, u1, u2)
    with b.track(u0), b.track(u1):
        assert {b.pick(t, set()) for _ in range(4)} == {u2}
        assert b.describe(u0).in_flight == 1
    assert b.describe(u0).in_flight == 0
    assert Counter(b.pick(t, set()) for _ in range(6)) == {u0: 2, u1: 2, u2: 2}


def test_in_flight_count_drops_when_the_request_fails(clock: Clock) -> None:
    b, u0 = Balancer("least_connections"), up(0)
    with pytest.raises(RuntimeError), b.track(u0):
        raise RuntimeError("replica broke")
    assert b.describe(u0).in_flight == 0


def test_established_replicas_are_served_before_their_first_probe(clock: Clock) -> None:
    b, u0 = Balancer("round_robin"), up(0)
    b.establish([u0])
    assert b.pick(target(u0), set()) == u0
    assert not b.is_ready(u0)
    view = b.describe(u0)
    assert (view.ready, view.starting, view.pid, view.url) == (False, False, u0.pid, u0.url)


def test_a_restarted_replica_on_the_same_port_starts_clean(clock: Clock) -> None:
    b, old = Balancer("round_robin"), up(0)
    ready(b, old)
    b.mark_down(old)
    new = Upstream(old.url, 0, "v2", 999)
    assert b.describe(new).failures == 0 and b.describe(new).starting
    assert b.pick(target(new), set()) is None


def test_forget_keeps_listed_and_busy_replicas(clock: Clock) -> None:
    b, (u0, u1, u2) = Balancer("round_robin"), (up(0), up(1), up(2))
    ready(b, u0, u1, u2)
    with b.track(u1):
        b.forget({(u0.url, u0.pid)})
        assert b.is_ready(u0) and b.is_ready(u1)  # kept: listed; in use
        assert not b.is_ready(u2)  # forgotten: a fresh record

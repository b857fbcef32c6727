"""The local gateway's replica choice (``Balancer``) as pure Python: tiers, policies, in-flight
counts, passive health and draining. The gateway tests drive the same code with real processes;
these pin each rule on its own. The clock is ``time.monotonic`` of the module, set per test.
"""

from __future__ import annotations

import pytest

from activities.platform.local import balancer as _balancer
from activities.platform.local.balancer import DOWN_SECONDS, Balancer, Target, Upstream


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(_balancer.time, "monotonic", c)
    return c


def ups(n: int, **kw: object) -> list[Upstream]:
    return [
        Upstream(url=f"http://r{i}", replica=i, version="v1", pid=100 + i, **kw) for i in range(n)
    ]  # type: ignore[arg-type]


def target(upstreams: list[Upstream], color: str | None = "blue") -> Target:
    return Target(agent_id="a", color=color, upstreams=tuple(upstreams))


def ready(b: Balancer, upstreams: list[Upstream]) -> None:
    for u in upstreams:
        b.set_ready(u, True)


def picks(b: Balancer, t: Target, n: int, exclude: set[str] | None = None) -> list[int | None]:
    out = []
    for _ in range(n):
        u = b.pick(t, exclude or set())
        out.append(None if u is None else u.replica)
    return out


def test_round_robin_rotates_over_ready_replicas(clock: Clock) -> None:
    b, u = Balancer("round_robin"), ups(3)
    ready(b, u)
    assert picks(b, target(u), 7) == [0, 1, 2, 0, 1, 2, 0]


def test_turns_are_per_agent_and_colour(clock: Clock) -> None:
    b, u = Balancer("round_robin"), ups(2)
    ready(b, u)
    blue, green = target(u, "blue"), target(u, "green")
    assert picks(b, blue, 1) == [0]
    assert picks(b, green, 1) == [0]  # green has its own turn counter
    assert picks(b, blue, 1) == [1]


def test_a_starting_replica_gets_nothing(clock: Clock) -> None:
    b, u = Balancer("round_robin"), ups(2)
    t = target(u)
    assert b.pick(t, set()) is None
    assert b.starting(t) == 2
    b.set_ready(u[1], True)
    assert picks(b, t, 3) == [1, 1, 1]
    assert b.starting(t) == 1
    assert b.is_ready(u[1]) and not b.is_ready(u[0])


def test_established_replicas_are_tried_when_none_is_ready(clock: Clock) -> None:
    b, u = Balancer("round_robin"), ups(2)
    b.establish(u)
    t = target(u)
    assert b.starting(t) == 0
    assert sorted(picks(b, t, 2)) == [0, 1]  # not ready, but served before: panic routing
    b.set_ready(u[0], True)
    assert picks(b, t, 3) == [0, 0, 0]  # a ready one wins over merely established
    b.set_ready(u[0], False)
    assert b.is_ready(u[0]) is False
    assert sorted(picks(b, t, 2)) == [0, 1]  # it stays established


def test_marked_down_is_skipped_for_down_seconds(clock: Clock) -> None:
    b, u = Balancer("round_robin"), ups(2)
    ready(b, u)
    t = target(u)
    b.mark_down(u[0])
    assert b.describe(u[0]).down is True
    assert b.describe(u[0]).failures == 1
    assert picks(b, t, 4) == [1, 1, 1, 1]
    clock.now += DOWN_SECONDS - 0.001
    assert picks(b, t, 2) == [1, 1]
    clock.now += 0.001  # exactly DOWN_SECONDS later it is back
    assert b.describe(u[0]).down is False
    assert sorted(picks(b, t, 2)) == [0, 1]


def test_down_mark_lasts_five_seconds() -> None:
    assert DOWN_SECONDS == 5.0


def test_all_down_still_tries_a_down_replica(clock: Clock) -> None:
    b, u = Balancer("round_robin"), ups(2)
    ready(b, u)
    b.mark_down(u[0])
    b.mark_down(u[1])
    assert sorted(picks(b, target(u), 2)) == [0, 1]


def test_ready_and_up_beats_established_and_up(clock: Clock) -> None:
    b, u = Balancer("round_robin"), ups(3)
    b.establish(u)
    b.set_ready(u[2], True)
    b.mark_down(u[2])  # the only ready one is down: the up, established ones come first
    assert sorted(picks(b, target(u), 4)) == [0, 0, 1, 1]


def test_draining_and_excluded_replicas_get_nothing(clock: Clock) -> None:
    b = Balancer("round_robin")
    u = ups(2)
    drained = Upstream(url="http://r9", replica=9, version="v1", pid=9, draining=True)
    ready(b, [*u, drained])
    t = target([*u, drained])
    assert 9 not in picks(b, t, 6)
    assert picks(b, t, 3, exclude={"http://r0"}) == [1, 1, 1]
    assert b.pick(t, {"http://r0", "http://r1"}) is None
    assert (
        b.starting(target([Upstream(url="http://x", replica=0, version="v", draining=True)])) == 0
    )
    assert b.describe(drained).starting is False and b.describe(drained).draining is True


def test_least_connections_prefers_fewest_in_flight(clock: Clock) -> None:
    b, u = Balancer("least_connections"), ups(3)
    ready(b, u)
    t = target(u)
    with b.track(u[0]), b.track(u[1]), b.track(u[1]):
        assert b.describe(u[1]).in_flight == 2
        assert picks(b, t, 3) == [2, 2, 2]
        with b.track(u[2]), b.track(u[2]), b.track(u[2]):
            assert picks(b, t, 2) == [0, 0]
    assert b.describe(u[1]).in_flight == 0
    assert sorted(picks(b, t, 3)) == [0, 1, 2]  # ties rotate


def test_track_counts_down_on_error(clock: Clock) -> None:
    b, u = Balancer("least_connections"), ups(1)
    with pytest.raises(RuntimeError, match="boom"), b.track(u[0]):
        assert b.describe(u[0]).in_flight == 1
        raise RuntimeError("boom")
    assert b.describe(u[0]).in_flight == 0


def test_restarted_replica_has_a_clean_record(clock: Clock) -> None:
    b = Balancer("round_robin")
    old = Upstream(url="http://r0", replica=0, version="v1", pid=1)
    new = Upstream(url="http://r0", replica=0, version="v1", pid=2)
    b.set_ready(old, True)
    b.mark_down(old)
    assert b.describe(new).model_dump() == {
        "url": "http://r0", "replica": 0, "version": "v1", "pid": 2, "ready": False,
        "starting": True, "draining": False, "in_flight": 0, "down": False, "failures": 0,
    }  # fmt: skip


def test_describe(clock: Clock) -> None:
    b = Balancer("round_robin")
    u = Upstream(url="http://r3", replica=3, version="v7", pid=42)
    b.set_ready(u, True)
    b.mark_down(u)
    b.mark_down(u)
    with b.track(u):
        assert b.describe(u).model_dump() == {
            "url": "http://r3", "replica": 3, "version": "v7", "pid": 42, "ready": True,
            "starting": False, "draining": False, "in_flight": 1, "down": True, "failures": 2,
        }  # fmt: skip


def test_forget_keeps_listed_and_busy_replicas(clock: Clock) -> None:
    b, u = Balancer("round_robin"), ups(3)
    ready(b, u)
    with b.track(u[2]):
        b.forget({(u[0].url, u[0].pid)})
        assert b.is_ready(u[0])  # kept: listed
        assert not b.is_ready(u[1])  # forgotten: a fresh record
        assert b.is_ready(u[2])  # kept: a request is in flight
    b.forget(set())
    assert not b.is_ready(u[2])

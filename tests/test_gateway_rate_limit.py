"""The local gateway's per-agent rate limit: a real gateway, real replicas, real HTTP.

``LocalPlatform.set_rate_limit`` writes ``rate_limit.json`` and pushes a sync; over the limit the
active port answers 429 with ``Retry-After``; a gateway started later enforces it too; lifting it
lets every request through again.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from activities.platform.base import PlatformError
from activities.platform.local.gateway import Gateway
from activities.platform.local.rate_limit import TokenBucket, retry_after
from tests.e2e_support import tag
from tests.test_gateway import ECHO_APP, agent, answers, eventually, make_settings, platform_for

__all__ = ["tag"]  # the fixture


def test_token_bucket_admits_a_burst_then_the_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(rps=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [None, None, None]
    assert bucket.take() == pytest.approx(0.5)  # one token every 0.5 s
    now[0] += 0.25
    assert bucket.take() == pytest.approx(0.25)
    now[0] += 0.25
    assert bucket.take() is None
    now[0] += 60  # a quiet minute refills to the burst, not beyond
    assert [bucket.take() for _ in range(4)][-1] is not None
    assert retry_after(0.01) == "1" and retry_after(1.2) == "2"


async def codes(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=10) as client:
        return [await client.get(url) for _ in range(n)]


async def test_rate_limit_answers_429_with_retry_after_survives_a_restart_and_lifts(
    tmp_path: Path, tag: str
) -> None:
    settings = make_settings(tmp_path)
    platform = platform_for(settings)
    spec = agent(tag, command=[sys.executable, "-c", ECHO_APP])
    with pytest.raises(PlatformError, match="no service"):
        await platform.set_rate_limit(spec.agent_id, 1.0)
    try:
        async with Gateway(settings) as gateway:
            await platform.ensure(spec, 1)
            info = await platform.describe_service(spec.agent_id)
            assert info is not None
            url = f"{info.active_url}/echo"
            await eventually(lambda: answers(url), "echo through the gateway")
            assert await platform.set_rate_limit(spec.agent_id, 0.2, burst=2) == 0.2
            route = gateway.route(spec.agent_id)
            assert route is not None
            assert (route.rate_limit_rps, route.rate_limit_burst) == (0.2, 2)
            replies = await codes(url, 4)
            assert [r.status_code for r in replies] == [200, 200, 429, 429]
            limited = replies[2]
            assert 1 <= int(limited.headers["retry-after"]) <= 5  # 1 token per 5 s
            assert "rate limited" in limited.json()["error"]
            # The preview port is not limited (a deployment's smoke tests must pass).
            await platform.ensure(spec, 1, "green")
            switched = await platform.switch_traffic(spec.agent_id, "blue", "green")
            assert switched.preview_url is not None
            preview = f"{switched.preview_url}/echo"
            await eventually(lambda: answers(preview), "the green preview")
            assert {r.status_code for r in await codes(preview, 5)} == {200}
        # A gateway started later reads the limit from the agent's files.
        async with Gateway(settings):
            await eventually(lambda: answers(url), "echo through the new gateway")
            replies = await codes(url, 3)
            assert [r.status_code for r in replies][-1] == 429
            assert await platform.set_rate_limit(spec.agent_id, None) is None
            assert {r.status_code for r in await codes(url, 10)} == {200}
    finally:
        await platform.stop_all(spec.agent_id)
    assert not (tmp_path / "agents" / spec.agent_id / "rate_limit.json").exists()

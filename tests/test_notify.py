"""Approval webhook posting (``activities.notify``): Retry-After, transport errors, dedupe.

The status-code mapping is in ``tests/test_approval.py::test_notify_error_mapping``; the
webhook is an ``httpx.MockTransport`` handler, as there.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.notify import MAX_RETRY_AFTER_SECONDS, NotifyActivities, retry_after_seconds
from fleetops.settings import ApprovalSettings
from tests.test_approval import SECRET_URL, note, notify_with

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("999999", MAX_RETRY_AFTER_SECONDS),
        ("Fri, 02 Jan 2026 03:04:35 GMT", 30.0),
        ("Fri, 02 Jan 2026 03:04:35 -0000", 30.0),  # no zone: taken as UTC
        ("Fri, 02 Jan 2026 03:00:00 GMT", 0.0),  # in the past
        ("tomorrow", None),
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, now=NOW) == seconds


def test_retry_after_cap_is_an_hour() -> None:
    assert MAX_RETRY_AFTER_SECONDS == 3600.0


def test_retry_after_date_against_the_wall_clock() -> None:
    later = datetime.now(UTC) + timedelta(seconds=120)
    header = later.strftime("%a, %d %b %Y %H:%M:%S GMT")
    delay = retry_after_seconds(header)
    assert delay is not None and 100 <= delay <= 120


async def test_timeout_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(ApplicationError, match=r"hooks\.example\.com timed out$") as info:
        await notify_with(handler, note())
    assert (info.value.type, info.value.non_retryable) == ("WebhookUnavailable", False)


async def test_unreachable_names_the_error_without_the_secret_path() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect to {request.url}", request=request)

    with pytest.raises(
        ApplicationError,
        match=r"approval webhook https://hooks\.example\.com unreachable: cannot connect to "
        r"https://hooks\.example\.com$",
    ):
        await notify_with(handler, note())


async def test_unreachable_without_a_message_names_the_type() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("", request=request)

    with pytest.raises(ApplicationError, match=r"unreachable: RemoteProtocolError$"):
        await notify_with(handler, note())


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/x", "http://[::1/x"])
async def test_invalid_url_is_misconfigured(url: str) -> None:
    # A real client: httpx refuses these URLs before any connection is tried.
    async with httpx.AsyncClient() as http:
        acts = NotifyActivities(http, ApprovalSettings(webhook_url=url))
        with pytest.raises(ApplicationError, match=r"FLEETOPS_APPROVAL__WEBHOOK_URL") as info:
            await ActivityEnvironment().run(acts.send_notification, note())
    assert (info.value.type, info.value.non_retryable) == ("WebhookMisconfigured", True)


async def test_rejected_message_says_not_retried() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text="no_service")

    with pytest.raises(
        ApplicationError,
        match=r"approval webhook https://hooks\.example\.com answered HTTP 404: no_service "
        r"\(check the webhook URL and payload; not retried\)$",
    ):
        await notify_with(handler, note())


async def test_escalation_falls_back_to_the_webhook() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(204)

    sent, _ = await notify_with(handler, note(escalation=True))
    assert sent and seen == [SECRET_URL]


async def test_remembered_keys_are_bounded_least_recently_used_first() -> None:
    posted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posted.append(request.headers["Idempotency-Key"])
        return httpx.Response(200)

    settings = ApprovalSettings(webhook_url=SECRET_URL, roles={"alice": ["sre", "dev"]})
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        acts = NotifyActivities(http, settings, remembered_keys=2)
        run = ActivityEnvironment().run
        for key in ["a", "b", "a", "c", "a", "b"]:
            assert await run(acts.send_notification, note(dedupe_key=key))
        assert await run(acts.approver_roles) == {"alice": ["sre", "dev"]}
    # "a" stays remembered (used again), "b" is dropped when "c" arrives, so it posts again.
    assert posted == ["a", "b", "c", "b"]


def test_redact_unparsable_url() -> None:
    from activities.notify import redact_url

    assert redact_url("http://[::1/hooks/SECRET") == "<invalid url>"

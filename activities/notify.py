"""Approval notifications: Slack-compatible incoming webhooks (``POST {"text": ...}``).

Any endpoint that accepts Slack's incoming-webhook JSON works (Slack, Mattermost, Rocket.Chat,
Microsoft Teams workflows, a Slack-compatible relay). Errors are mapped for Temporal's retries:
connection errors, timeouts, 408, 429 and 5xx are retryable (429 honours ``Retry-After``); any
other 4xx is non-retryable ``WebhookRejected``.

Sources:
    Slack incoming webhooks and their errors: https://api.slack.com/messaging/webhooks
"""

from __future__ import annotations

import email.utils
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities._text import shorten
from fleetops.approvals import ApprovalPolicy, Notification
from fleetops.errors import (
    WEBHOOK_MISCONFIGURED,
    WEBHOOK_RATE_LIMITED,
    WEBHOOK_REJECTED,
    WEBHOOK_UNAVAILABLE,
)
from fleetops.settings import ApprovalSettings

_MAX_BODY_CHARS = 200
MAX_RETRY_AFTER_SECONDS = 3600.0
"""Upper bound of a ``Retry-After`` we honour, in seconds (a longer one is capped)."""
DEFAULT_REMEMBERED_KEYS = 4096
"""Dedupe keys of sent notifications one worker remembers (least recently used are dropped)."""


def _short(text: str) -> str:
    return shorten(text, _MAX_BODY_CHARS)


def redact_url(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: webhook paths are secrets (Slack's are tokens).

    Args:
        url: the webhook URL.

    Returns:
        The URL without path, query, or credentials; ``<invalid url>`` if it does not parse.
    """
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid url>"
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{u.host}{port}"


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Parse a ``Retry-After`` header (delay in seconds, or an HTTP date).

    Args:
        value: the header value, if any.
        now: the current time for HTTP dates (default: the wall clock, UTC).

    Returns:
        Seconds to wait, within ``[0, MAX_RETRY_AFTER_SECONDS]``; None if absent or unparsable.
    """
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


class NotifyActivities:
    """Approval notifications and the approver role map.

    Args:
        http: the client every post uses; build it without retries (Temporal owns retries) and
            with a timeout (e.g. 10 s).
        settings: the ``approval`` settings: webhook URLs and the user -> roles map.
        remembered_keys: how many sent dedupe keys to remember, so a retried activity whose
            post succeeded does not post again from the same worker.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: ApprovalSettings,
        *,
        remembered_keys: int = DEFAULT_REMEMBERED_KEYS,
    ) -> None:
        self._http = http
        self._settings = settings
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._remembered_keys = remembered_keys

    @activity.defn(name="send_notification")
    async def send_notification(self, n: Notification) -> bool:
        """Post ``{"text": n.text}`` to the approval webhook, at most once per ``n.dedupe_key``.

        The request carries ``Idempotency-Key: <dedupe_key>`` for receivers that deduplicate;
        this worker also remembers keys it sent (bounded LRU).

        Args:
            n: the notification; ``n.escalation`` selects ``escalation_webhook_url`` (falling
                back to ``webhook_url``).

        Returns:
            True if posted (or already posted by this worker); False if no webhook is configured.

        Raises:
            ApplicationError: ``WebhookUnavailable`` (retryable: connection error, timeout,
                408, 5xx), ``WebhookRateLimited`` (retryable, 429, delayed by ``Retry-After``),
                ``WebhookRejected`` (non-retryable: other 4xx), or ``WebhookMisconfigured``
                (non-retryable: the URL is invalid).
        """
        url = self._url(n.escalation)
        if not url:
            activity.logger.info("no approval webhook configured; %s notification not sent", n.kind)
            return False
        if n.dedupe_key in self._sent:
            self._sent.move_to_end(n.dedupe_key)
            activity.logger.info("notification %s already sent; not posting again", n.dedupe_key)
            return True
        where = redact_url(url)
        response = await self._post(url, where, n)
        self._check(response, where)
        self._sent[n.dedupe_key] = None
        while len(self._sent) > self._remembered_keys:
            self._sent.popitem(last=False)
        activity.logger.info("%s notification posted to %s", n.kind, where)
        return True

    @activity.defn(name="approver_roles")
    async def approver_roles(self) -> dict[str, list[str]]:
        """The approver role map from settings (``approval.roles``).

        Kept for histories recorded before :meth:`approval_policy` existed (they replay it).

        Returns:
            User name -> role names.
        """
        return {user: list(roles) for user, roles in self._settings.roles.items()}

    @activity.defn(name="approval_policy")
    async def approval_policy(self) -> ApprovalPolicy:
        """Roles, approver public keys and the signature age limit from ``approval.*`` settings.

        The gate calls it (as a local activity) when a request starts, so the policy is recorded
        in history and the workflow verifies signatures deterministically.

        Returns:
            The policy; keys are base64 of the 32 raw Ed25519 public-key bytes.
        """
        s = self._settings
        return ApprovalPolicy(
            roles={user: list(roles) for user, roles in s.roles.items()},
            public_keys=dict(s.public_keys),
            signature_max_age_seconds=s.signature_max_age_seconds,
        )

    def _url(self, escalation: bool) -> str | None:
        if escalation and self._settings.escalation_webhook_url:
            return self._settings.escalation_webhook_url
        return self._settings.webhook_url

    async def _post(self, url: str, where: str, n: Notification) -> httpx.Response:
        # Errors are re-raised `from None`: httpx exceptions can carry the request URL, whose
        # path is a secret, and Temporal would record the cause chain in history.
        try:
            return await self._http.post(
                url, json={"text": n.text}, headers={"Idempotency-Key": n.dedupe_key}
            )
        except (httpx.InvalidURL, httpx.UnsupportedProtocol):
            raise ApplicationError(
                f"approval webhook URL for {where} is invalid; fix FLEETOPS_APPROVAL__WEBHOOK_URL",
                type=WEBHOOK_MISCONFIGURED,
                non_retryable=True,
            ) from None
        except httpx.TimeoutException:
            raise ApplicationError(
                f"approval webhook {where} timed out", type=WEBHOOK_UNAVAILABLE
            ) from None
        except httpx.HTTPError as err:
            detail = _short(str(err).replace(url, where)) or type(err).__name__
            raise ApplicationError(
                f"approval webhook {where} unreachable: {detail}", type=WEBHOOK_UNAVAILABLE
            ) from None

    @staticmethod
    def _check(response: httpx.Response, where: str) -> None:
        status = response.status_code
        if response.is_success:
            return
        message = f"approval webhook {where} answered HTTP {status}: {_short(response.text)}"
        if status == 429:
            delay = retry_after_seconds(response.headers.get("Retry-After"))
            raise ApplicationError(
                message,
                type=WEBHOOK_RATE_LIMITED,
                next_retry_delay=timedelta(seconds=delay) if delay is not None else None,
            )
        if status >= 500 or status == 408:
            raise ApplicationError(message, type=WEBHOOK_UNAVAILABLE)
        raise ApplicationError(
            message + " (check the webhook URL and payload; not retried)",
            type=WEBHOOK_REJECTED,
            non_retryable=True,
        )

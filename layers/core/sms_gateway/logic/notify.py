"""Client notifications: what a status change or an inbound SMS looks like on the client's webhook."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sms_gateway.domain.models import Account, DeliveryReportMode, StatusChange
from sms_gateway.domain.webhook_urls import endpoint_of, redirect_target
from sms_gateway.domain.webhooks import signed_headers
from sms_gateway.errors import InvalidRequest, NotFound
from sms_gateway.ports import AccountLookup, SecretBox

DLR = "dlr"


# How long after its callback an inbound SMS whose notification was not queued, or a final delivery report whose
# announcement was not (the queue refused it, or the function died first), waits for a sweep (logic/sweep.py) to
# queue it: far past the webhook function's timeout, so a sweep never queues the notification of a callback still
# running.
NOTIFY_SWEEP_DELAY = timedelta(minutes=2)


def dlr_notification(change: StatusChange) -> dict[str, Any] | None:
    """The DLR callback of one status change, or None when the batch did not ask for delivery reports."""
    message = change.message
    if message.delivery_report != DeliveryReportMode.YES:
        return None
    return {
        "kind": DLR,
        # One id per status change: the client deduplicates retries by it (Standard Webhooks `webhook-id`).
        "id": f"dlr_{message.message_id}_{message.sequence}",
        "account_id": message.account_id,
        # The batch's own callback URL when it gave one; otherwise the account's DLR URL at delivery time.
        "url": message.callback_url,
        "payload": {
            "type": "delivery report",
            "message_id": str(message.message_id),
            "reference_id": str(message.reference_id),
            "ref_id": message.ref_id,
            "session_id": message.session_id,
            "sent_date": message.sent_date,
            "from": message.sender,
            "to": message.msisdn.lstrip("+"),
            "telco": message.telco,
            "status": str(message.status),
            "error_code": message.error_code,
            "parts": message.parts,
            "status_at": message.status_at.get(str(message.status)),
            "reported_at": message.reported_at,
            "sequence": message.sequence,
        },
    }


def notifications_of(changes: Iterable[StatusChange]) -> list[dict[str, Any]]:
    """The DLR callbacks of those changes whose batch asked for delivery reports."""
    return [notification for notification in map(dlr_notification, changes) if notification is not None]


@dataclass(frozen=True)
class WebhookResponse:
    status_code: int
    body: str
    retry_after: float | None = None
    # A redirect's Location header, as the client's server sent it (redirects are not followed: a signed post goes
    # only where the account said).
    location: str | None = None


Post = Callable[[str, dict[str, str], bytes], Awaitable[WebhookResponse]]

# The client's webhook says the endpoint is gone for good (Standard Webhooks: stop sending there): the notification is
# not retried, and it is dead at once without the operator's dead-letter alarm (the client's choice, not a fault).
GONE = 410


class WebhookFailed(Exception):
    def __init__(
        self,
        reason: str,
        retry_after: float | None = None,
        *,
        status_code: int | None = None,
        url: str | None = None,
        unreachable: bool = False,
        host_down: bool = False,
    ) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        # No answer at all: the connection failed, or it or the answer timed out.
        self.unreachable = unreachable
        # No connection at all (refused, unresolvable, timed out connecting): all the circuit breaker counts, for
        # every URL of the origin. A read timeout is not: the host is up, only that URL is slow.
        self.host_down = host_down
        # What the failed-notifications record shows: the client's answer, and where it was posted.
        self.status_code = status_code
        self.url = url

    @property
    def gone(self) -> bool:
        """The client's webhook answered 410 Gone: no retry would be taken."""
        return self.status_code == GONE


def target_url(account: Account, notification: dict[str, Any]) -> str | None:
    if notification.get("url"):
        return str(notification["url"])
    return account.dlr_url if notification["kind"] == DLR else account.inbound_url


def gets_webhook_token(account: Account, url: str) -> bool:
    """Whether a post to `url` carries the account's webhook token: only to one of the account's own webhook URLs
    (DLR or inbound), its scheme, host, port and path the same (its query may differ). A batch's `callback_url` is
    chosen by whoever holds one of the account's API tokens, and may be anyone's collector; the webhook token is what
    the account's real webhooks take as proof that a post is the gateway's, so sent there it let that URL's owner
    forge inbound SMS and delivery reports to them (until 2026-12-06). The same origin is not enough: on a host many
    customers share (script.google.com, hooks.zapier.com, hook.eu1.make.com) anyone makes a hook of their own beside
    the account's (until later on 2026-12-06 the token went to any URL on the origin of one of them). Elsewhere a
    post has no Authorization header, only the signature."""
    endpoint = endpoint_of(url)
    own = {endpoint_of(own_url) for own_url in (account.dlr_url, account.inbound_url) if own_url}
    return endpoint is not None and endpoint in own


async def deliver(
    notification: dict[str, Any],
    accounts: AccountLookup,
    post: Post,
    box: SecretBox,
    *,
    now: Callable[[], float] = time.time,
    recheck: Callable[[str], Account | None] | None = None,
) -> str | None:
    """POSTs one notification; answers the URL it was delivered to (the account's now: a resend after the client
    changed it goes to the new one). The client must answer 2xx with valid JSON (the seeds require it);
    anything else raises WebhookFailed so the record is retried. None when there is nowhere to send it.
    `recheck`: the account read afresh, when `accounts` (cached settings) names no URL for the notification: the
    client may have set one since, and the notification would be dropped."""
    account = accounts.get_account(str(notification["account_id"]))
    if account is None:
        raise NotFound(f"account {notification['account_id']} no longer exists")
    url = target_url(account, notification)
    if not url and recheck is not None:
        account = recheck(account.account_id) or account
        url = target_url(account, notification)
    if not url:
        return None
    body = json.dumps(notification["payload"], separators=(",", ":"))
    headers = {"Content-Type": "application/json"}
    if gets_webhook_token(account, url):
        token = box.open(account.account_id, "webhook_token", account.webhook_token) if account.webhook_token else ""
        headers["Authorization"] = f"Bearer {token}"
    if account.webhook_secret:
        secret = box.open(account.account_id, "webhook_secret", account.webhook_secret)
        webhook_id = str(notification.get("id") or f"{notification['kind']}_{hash_of(body)}")
        headers |= signed_headers(secret, webhook_id, int(now()), body)
    try:
        response = await post(url, headers, body.encode())
    except WebhookFailed as failure:
        failure.url = failure.url or url
        raise
    if response.status_code == GONE:
        raise WebhookFailed(
            f"client webhook answered {GONE} Gone: not retried",
            status_code=GONE,
            url=url,
        )
    if not 200 <= response.status_code < 300:
        raise WebhookFailed(
            _failed_answer(url, response),
            response.retry_after,
            status_code=response.status_code,
            url=url,
        )
    try:
        json.loads(response.body)
    # RecursionError: JSON nested deeper than the interpreter's stack ("[" * 100000) is no more valid to us.
    except (ValueError, RecursionError) as error:
        raise WebhookFailed(
            "client webhook answered 2xx without valid JSON", status_code=response.status_code, url=url
        ) from error
    return url


def _failed_answer(url: str, response: WebhookResponse) -> str:
    """Why an answer other than 2xx failed the delivery; for a redirect, where it pointed, so the client can tell which
    URL to set (a trailing slash, http to https)."""
    reason = f"client webhook answered {response.status_code}"
    target = redirect_target(url, response.location) if 300 <= response.status_code < 400 else None
    if target is None:
        return reason
    return f"{reason} redirecting to {target}: redirects are not followed, set that URL if it is your webhook"


def hash_of(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:32]


TEST_EVENT = "test"


@dataclass(frozen=True)
class WebhookTestResult:
    """Where a test event went and what the client's webhook answered."""

    url: str
    status_code: int


class _OneAccount:
    def __init__(self, account: Account) -> None:
        self.account = account

    def get_account(self, account_id: str) -> Account | None:
        return self.account if account_id == self.account.account_id else None


def make_test_event(account: Account, kind: str, *, sent_at: str) -> dict[str, Any]:
    """A test event for the account's DLR (`kind` "dlr") or inbound ("inbound") webhook: `type: "test"`, so a
    client can tell it from a real report, and a fresh webhook-id, so it is never dropped as a duplicate."""
    return {
        "kind": kind,
        "id": f"test_{secrets.token_hex(12)}",
        "account_id": account.account_id,
        "url": None,
        "payload": {
            "type": TEST_EVENT,
            "event": "delivery report" if kind == DLR else "two-way sms",
            "message": "A test event from the SMS gateway: your webhook is reachable and can check our signature.",
            "sent_at": sent_at,
        },
    }


async def send_test_event(
    account: Account, kind: str, post: Post, box: SecretBox, *, sent_at: str
) -> WebhookTestResult:
    """POSTs a test event the way every notification is posted (signed, with the webhook token); WebhookFailed
    when the client's webhook does not answer 2xx with JSON, InvalidRequest when no URL is set for `kind`."""
    notification = make_test_event(account, kind, sent_at=sent_at)
    url = target_url(account, notification)
    if not url:
        which = "delivery report (DLR)" if kind == DLR else "inbound SMS"
        raise InvalidRequest(f"no {which} webhook URL is set: save one first")
    answers: list[WebhookResponse] = []

    async def recording_post(target: str, headers: dict[str, str], body: bytes) -> WebhookResponse:
        answers.append(await post(target, headers, body))
        return answers[-1]

    await deliver(notification, _OneAccount(account), recording_post, box)
    return WebhookTestResult(url=url, status_code=answers[-1].status_code)

"""Twilio Programmable Messaging: form-encoded submits, signed StatusCallback DLRs and incoming-message webhooks.

API documentation this adapter follows:
- Create a Message: https://www.twilio.com/docs/messaging/api/message-resource
  (`POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, HTTP Basic auth with the Account SID and Auth Token or an
  API key SID and secret, form fields `To`, `From` or `MessagingServiceSid`, `Body`, `StatusCallback`; answers 201 with
  the Message resource as JSON, `sid` being its id; errors are `{"code", "message", "more_info", "status"}`).
- Status callbacks: https://www.twilio.com/docs/messaging/guides/outbound-message-status-in-status-callbacks
  (form POST with `MessageSid`, `MessageStatus`, `ErrorCode`, `To`, `From`, `AccountSid`, ...).
- Webhook security: https://www.twilio.com/docs/usage/webhooks/webhooks-security (`X-Twilio-Signature` is
  base64(HMAC-SHA1(auth token, full URL + each POST parameter name and value, sorted by name))), as implemented by
  twilio-python's `RequestValidator`, which also accepts the URL with and without an explicit :443.
- Incoming messages: https://www.twilio.com/docs/messaging/guides/webhook-request (`MessageSid`, `From`, `To`,
  `Body`, `NumMedia`, ...).

Our client reference rides in the StatusCallback URL's query (`?ref=<account>.<reference>.<message id>`): Twilio calls
that URL as given and signs it whole, so a DLR finds its message with one key lookup and cannot be re-pointed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import httpx

from sms_gateway.adapters.http import (
    GATEWAY_ERRORS_MAYBE_TAKEN,
    answer_json,
    answered_id,
    async_client,
    no_answer,
    not_about_the_message,
    not_sent_there,
    refuses_our_account,
    retry_after_seconds,
    scrubbed,
)
from sms_gateway.adapters.providers.parts import too_long
from sms_gateway.adapters.providers.tokens import previous_tokens_setting, secret_setting
from sms_gateway.domain.ids import ascii_digits
from sms_gateway.domain.models import (
    CallbackRequest,
    DeliveryReport,
    InboundSms,
    SubmitRequest,
    SubmitResult,
    iso,
    utc_now,
)
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import CallbackRejected, UpstreamError

DEFAULT_BASE_URL = "https://api.twilio.com"
# Twilio's ValidityPeriod, in seconds, is 1 to 36000 (its default): a longer validity is left to the default.
MAX_VALIDITY_SECONDS = 36_000
# The query parameter of our StatusCallback URL that carries our client reference back.
REF_PARAM = "ref"
SIGNATURE_HEADER = "x-twilio-signature"

# Twilio's MessageStatus values -> ours. Intermediate states are `submitted`; `failed` means Twilio never sent it
# (refused, queue overflow, account problem), `undelivered` that the carrier could not deliver it.
DLR_STATUS: dict[str, MessageStatus] = {
    "accepted": MessageStatus.SUBMITTED,
    "scheduled": MessageStatus.SUBMITTED,
    "queued": MessageStatus.SUBMITTED,
    "sending": MessageStatus.SUBMITTED,
    "sent": MessageStatus.SUBMITTED,
    "delivered": MessageStatus.DELIVERED,
    "read": MessageStatus.DELIVERED,
    # Some segments reached the handset: Twilio charges for it and the recipient has (part of) the text.
    "partially_delivered": MessageStatus.DELIVERED,
    "undelivered": MessageStatus.FAILED,
    "failed": MessageStatus.REJECTED,
    # A scheduled Twilio message cancelled at Twilio: we never do that, and `cancelled` cannot follow `submitted`.
    "canceled": MessageStatus.FAILED,
}

# Error codes of a 4xx answer that are worth retrying; every other 4xx refuses the message itself
# (21211 invalid To, 21614 not a mobile number, 21610 unsubscribed, ...) unless named below.
TRANSIENT_ERROR_CODES = frozenset(
    {
        20429,  # too many requests
        21611,  # the From number has too many messages queued
    }
)
# Error codes saying our Twilio account may not send there: our setup at Twilio, not the message, which an upstream
# holding that sender or reaching that number may send. Never sent there; the route's fallback is offered it, and
# without one it fails (https://www.twilio.com/docs/api/errors/<code>).
NOT_SENT_THERE_ERROR_CODES = frozenset(
    {
        21408,  # the account's geo permissions do not include the To number's country
        21606,  # the From is not a message-capable number of the account for this destination
        21608,  # a trial account (or one without an approved compliance profile) sends only to verified numbers
        21612,  # this To and From combination: a sender ID the destination country or network does not take from it
        21659,  # the From is not a Twilio number or sender ID of the account, or a short code of another country
    }
)
# Twilio's most characters of one Body (https://www.twilio.com/docs/messaging/api/message-resource, `Body`): a longer
# one is refused with 21617. A message that long (11 GSM-7 parts, for an account whose max_parts was raised) is not
# sent there, as one over Kannel's or Jasmin's max_parts: the route's fallback is offered it.
MAX_BODY_CHARACTERS = 1600
BODY_TOO_LONG_ERROR_CODE = 21617
# HTTP statuses meaning our credentials or account setup are wrong: not the message's fault, so it is offered to the
# fallback upstream (and retried) rather than failed.
ACCOUNT_PROBLEM_STATUSES = frozenset({401, 403, 404})
# Error codes of a 400 saying the same of our configuration: the `messaging_service_sid` names no Messaging Service of
# our account (21701) or is no service sid at all (21705). Every message would be refused alike until it is fixed.
ACCOUNT_PROBLEM_ERROR_CODES = frozenset({21701, 21705})
# HTTP statuses after which Twilio may have created the message: a 500 (error 20500) is "an error in the server
# handling logic or a timeout in the API", and creating a message is not idempotent (a retry "can send multiple
# messages", https://www.twilio.com/docs/api/errors/20500); a 502/504 is its edge losing the backend's answer. Like
# no answer at all (`no_answer`), not like a 503, which says the request was not served.
MAYBE_TAKEN_STATUSES = frozenset({500, 502, 504})

_LONG_DIGITS = re.compile(r"\+?\d{7,}")


class TwilioProvider:
    # No upstream-id link needed: our reference rides in the StatusCallback URL.
    echoes_client_ref = True

    # Twilio expects TwiML for an incoming message; an empty <Response/> means "no reply" (no warning 12300).
    inbound_ack = ("text/xml", "<Response/>")

    def __init__(
        self,
        *,
        name: str,
        account_sid: str,
        auth_token: str,
        previous_auth_tokens: list[str] | None = None,
        api_key_sid: str | None = None,
        api_key_secret: str | None = None,
        messaging_service_sid: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not account_sid:
            raise ValueError("a twilio upstream needs account_sid")
        auth_token = secret_setting(name, "auth_token", auth_token)
        if bool(api_key_sid) != bool(api_key_secret):
            raise ValueError("api_key_sid and api_key_secret go together")
        self.name = name
        self._account_sid = account_sid
        # The Auth Token signs every webhook, even when submits authenticate with an API key.
        self._auth_token = auth_token
        # Callbacks signed with a token a rotation replaced are still taken until it is removed (tokens.py); submits
        # authenticate with the current one only.
        self._callback_tokens = (
            auth_token,
            *previous_tokens_setting(name, previous_auth_tokens, setting="previous_auth_tokens"),
        )
        self._auth = (api_key_sid, api_key_secret) if api_key_sid and api_key_secret else (account_sid, auth_token)
        self._messaging_service_sid = messaging_service_sid or None
        # Parsed once: httpx parses a URL given as a string on every request.
        self._messages_url = httpx.URL(
            f"{base_url.rstrip('/')}/2010-04-01/Accounts/{quote(account_sid, safe='')}/Messages.json"
        )
        self._client = client

    @classmethod
    def from_config(
        cls, name: str, config: Mapping[str, Any], *, client: httpx.AsyncClient | None = None
    ) -> TwilioProvider:
        return cls(
            name=name,
            account_sid=str(config["account_sid"]),
            auth_token=config["auth_token"],
            previous_auth_tokens=config.get("previous_auth_tokens"),
            api_key_sid=config.get("api_key_sid"),
            api_key_secret=config.get("api_key_secret"),
            messaging_service_sid=config.get("messaging_service_sid"),
            base_url=str(config.get("base_url") or DEFAULT_BASE_URL),
            client=client,
        )

    async def submit(self, request: SubmitRequest) -> SubmitResult:
        if len(request.text) > MAX_BODY_CHARACTERS:
            raise too_long(
                f"{self.name} sends at most {MAX_BODY_CHARACTERS} characters of a Body (Twilio's limit), this one is "
                f"{len(request.text)}: not sent there"
            )
        form = {"To": request.msisdn, "Body": request.text}
        if self._messaging_service_sid:
            form["MessagingServiceSid"] = self._messaging_service_sid
        else:
            form["From"] = twilio_sender(request.sender)
        callback = status_callback_url(request.dlr_url, request.client_ref)
        if callback:
            form["StatusCallback"] = callback
        if request.validity_minutes is not None and request.validity_minutes * 60 < MAX_VALIDITY_SECONDS:
            # How long the message may wait in Twilio's queue (1 to 36000 s, which is also its default).
            form["ValidityPeriod"] = str(request.validity_minutes * 60)
        client = self._client or async_client()
        try:
            response = await client.post(
                self._messages_url, data=form, auth=self._auth, headers={"Accept": "application/json"}
            )
        except httpx.TransportError as error:
            raise no_answer(self.name, error) from error
        if response.is_success:
            return SubmitResult(upstream_message_id=answered_id(self.name, response, "sid", of_type=str))
        raise self._error(response)

    def _error(self, response: httpx.Response) -> UpstreamError:
        status = response.status_code
        code, quoted = _twilio_error(response)
        # Twilio's messages quote the number ("The 'To' number +1555... is not valid"): logs never see it whole.
        message = _LONG_DIGITS.sub("***", scrubbed(quoted, (self._auth_token, self._auth[1])))
        described = f"{self.name} answered {status}" + (f" error {code}" if code is not None else "")
        if message:
            described += f": {message}"
        failure = not_about_the_message(
            described, response, gateway_errors=GATEWAY_ERRORS_MAYBE_TAKEN, maybe_taken_statuses=MAYBE_TAKEN_STATUSES
        )
        if failure is not None:
            return failure
        if code in TRANSIENT_ERROR_CODES:
            return UpstreamError(
                described,
                permanent=False,
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
                unavailable=False,
            )
        if status in ACCOUNT_PROBLEM_STATUSES or code in ACCOUNT_PROBLEM_ERROR_CODES:
            return refuses_our_account(described)
        if code in NOT_SENT_THERE_ERROR_CODES:
            return not_sent_there(described)
        if code == BODY_TOO_LONG_ERROR_CODE:
            # A Body Twilio counts longer than submit does (code points): the same refusal, told by Twilio.
            return too_long(described)
        return UpstreamError(described, permanent=True)

    def verify_callback(self, request: CallbackRequest) -> bool:
        given = request.headers.get(SIGNATURE_HEADER, "")
        if not given:
            return False
        params = form_params(request.body) if request.method.upper() == "POST" else {}
        # Every token and URL form is compared, in constant time: the time taken tells nothing of which one matched.
        matched = False
        for token in self._callback_tokens:
            for url in _url_variants(request.url):
                matched |= hmac.compare_digest(twilio_signature(token, url, params).encode(), given.encode())
        return matched

    def parse_delivery_reports(self, request: CallbackRequest) -> list[DeliveryReport]:
        fields = _callback_fields(request)
        sid = fields.get("MessageSid") or fields.get("SmsSid")
        raw_status = (fields.get("MessageStatus") or fields.get("SmsStatus") or "").lower()
        status = DLR_STATUS.get(raw_status)
        if not sid or status is None:
            raise CallbackRejected(f"not a twilio status callback: MessageStatus {raw_status!r}")
        return [
            DeliveryReport(
                upstream=self.name,
                upstream_message_id=sid,
                client_ref=request.query.get(REF_PARAM) or None,
                status=status,
                error_code=fields.get("ErrorCode") or None,
                reported_at=_dlr_done_date(fields.get("RawDlrDoneDate")),
            )
        ]

    def parse_inbound(self, request: CallbackRequest) -> InboundSms:
        fields = _callback_fields(request)
        try:
            return InboundSms(
                upstream=self.name,
                upstream_message_id=fields.get("MessageSid") or fields.get("SmsSid") or None,
                msisdn=fields["From"],
                # Our numbers are registered as digits (the shortcode dialect's convention): "+1555..." -> "1555...".
                to=fields["To"].lstrip("+"),
                text=fields.get("Body", ""),
                received_at=iso(utc_now()),
            )
        except KeyError as error:
            raise CallbackRejected(f"not a twilio incoming message: {error} missing") from error

    def __repr__(self) -> str:
        return f"TwilioProvider(name={self.name!r}, account_sid={self._account_sid!r})"


def twilio_sender(sender: str) -> str:
    """A long number stored as digits becomes E.164 for Twilio; short codes and alphanumeric sender IDs stay."""
    if sender.isdigit() and len(sender) > 6:
        return f"+{sender}"
    return sender


def status_callback_url(dlr_url: str | None, client_ref: str) -> str | None:
    """Our DLR URL with the client reference in its query. None when there is no public (absolute) DLR URL, since
    Twilio refuses a relative StatusCallback."""
    if not dlr_url or not dlr_url.startswith(("https://", "http://")):
        return None
    separator = "&" if urlsplit(dlr_url).query else "?"
    return f"{dlr_url}{separator}{REF_PARAM}={quote(client_ref, safe='')}"


def form_params(body: str) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        params.setdefault(key, []).append(value)
    return params


def twilio_signature(auth_token: str, url: str, params: Mapping[str, list[str]]) -> str:
    """base64(HMAC-SHA1(auth token, URL + name + value for each parameter, names sorted, repeated values sorted))."""
    payload = url + "".join(name + value for name in sorted(params) for value in sorted(set(params[name])))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _twilio_error(response: httpx.Response) -> tuple[int | None, str]:
    try:
        payload = answer_json(response)
    except ValueError:
        return None, ""
    if not isinstance(payload, dict):
        return None, ""
    code = payload.get("code")
    number = int(code) if isinstance(code, int | str) and ascii_digits(str(code)) else None
    return number, str(payload.get("message") or "")


def _url_variants(url: str) -> list[str]:
    """The URL as received, plus the same URL with the default port added or removed: Twilio signs either form."""
    parts = urlsplit(url)
    default_port = 443 if parts.scheme == "https" else 80
    host = parts.hostname or ""
    if parts.port is None:
        other = urlunsplit(parts._replace(netloc=f"{parts.netloc}:{default_port}"))
    elif parts.port == default_port:
        other = urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0] or host))
    else:
        return [url]
    return [url, other]


def _callback_fields(request: CallbackRequest) -> dict[str, str]:
    """Callback parameters: the query string (all of them for a GET callback), overlaid by the form body of a POST."""
    fields = dict(request.query)
    if request.method.upper() == "POST":
        fields.update((key, values[-1]) for key, values in form_params(request.body).items())
    return fields


def _dlr_done_date(raw: str | None) -> str | None:
    """RawDlrDoneDate is the carrier's done date as YYMMDDhhmm, read as UTC; only some carriers report it."""
    if not raw or len(raw) != 10 or not raw.isdigit():
        return None
    try:
        return iso(datetime.strptime(raw, "%y%m%d%H%M").replace(tzinfo=UTC))
    except ValueError:
        return None

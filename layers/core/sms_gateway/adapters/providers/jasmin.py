"""Jasmin SMS gateway as an upstream: its HTTP API `/send`, DLRs thrown to our dlr-url, MO from an HTTP connector.

References (Jasmin documentation, "HTTP API", https://docs.jasminsms.com/en/latest/apis/ja-http/index.html, and
its source jasmin/protocols/http/endpoints/send.py, jasmin/protocols/http/errors.py, jasmin/routing/throwers.py):
- `POST /send` (GET also works) with `username`, `password` (16 characters at most), `to`, `from`, `content` or
  `hex-content`, `coding`, `dlr` (yes|no), `dlr-url`, `dlr-level` (1 SMSC, 2 terminal, 3 both: we ask 3),
  `dlr-method`.
- Answers `200 Success "<uuid>"`; errors `Error "<reason>"` with 400 (validation, our user's permissions and value
  filters), 403 (authentication, charging, throughput), 412 (no route, or a failover route with no bound connector),
  500/503 (server, interceptor).
- DLR: `id`, `message_status`, `level` (level 1: the submit_sm_resp command status, thrown once for the first answer
  to a submit that Jasmin then retries itself, jasmin/managers/listeners.py and dlr.py), and for level 2 `id_smsc`,
  `sub`, `dlvrd`, `subdate`, `donedate`, `err`, `text`; form-encoded in the body with `dlr-method=POST` (the
  dlr-url, with its query string, is kept as given).
- MO through an HTTP client connector: `id`, `from`, `to`, `origin-connector`, `priority`, `coding`, `validity`,
  `content`, `binary` (the content hexlified).
Jasmin considers a callback delivered only when the answer is `200` with the body `ACK/Jasmin` exactly; see
`CALLBACK_ACK` and docs/providers-smsc.md.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote

import httpx

from sms_gateway.adapters.http import (
    async_client,
    gateway_errors_setting,
    no_answer,
    not_about_the_message,
    not_sent_there,
    refuses_our_account,
    scrubbed,
    unreadable_take,
)
from sms_gateway.adapters.providers.parts import max_parts_setting, refuse_longer
from sms_gateway.adapters.providers.receipts import settles_as
from sms_gateway.adapters.providers.tokens import previous_tokens_setting, token_verified
from sms_gateway.domain.ids import ascii_digits
from sms_gateway.domain.models import CallbackRequest, DeliveryReport, InboundSms, SubmitRequest, SubmitResult, iso
from sms_gateway.domain.segments import Encoding, padded_for_blind_cut, segment
from sms_gateway.domain.status import MessageStatus
from sms_gateway.errors import CallbackRejected, UpstreamError

SEND_PATH = "/send"
# The body Jasmin's DLR and MO throwers require, or they retry (3 more times, 30 s apart, by default).
CALLBACK_ACK = "ACK/Jasmin"
DLR_LEVEL_BOTH = 3
# Jasmin's /send takes a username and password of 1 to 16 bytes: its pattern ^.{1,16}$ is matched against the form
# value's UTF-8 bytes, so "ä" or "€" counts 2 or 3, and a newline none of them.
MAX_CREDENTIAL_LENGTH = 16
# Jasmin's `[http-api] long_content_max_parts` default: it sends that many parts of a longer text, drops the rest
# (SMPPOperationFactory.SubmitSM) and still answers Success.
DEFAULT_MAX_PARTS = 5
CODING_DEFAULT, CODING_UCS2 = "0", "8"
# How an MO with data_coding 0 is read: GSM 03.38, or a Python codec name the SMSC actually uses ("latin-1").
MO_GSM7 = "gsm0338"

# The one status table. Level 1 reports the SMSC's answer to submit_sm (an ESME_* command status: ESME_ROK is a
# take, any other status a refusal, unless Jasmin retries it: see RETRIED_STATUSES); level 2 reports the receipt's
# state from the handset side. Jasmin deletes a message's DLR request after a receipt in its final_states (DELIVRD,
# EXPIRED, DELETED, UNDELIV, REJECTD; jasmin/managers/dlr.py): those are the last word. It throws UNKNOWN and ACCEPTD
# and keeps the request, so the SMSC's next receipt comes too (a real Jasmin 0.11.0 threw UNKNOWN then DELIVRD, and
# ACCEPTD then UNDELIV): submitted, not a final status that would shut out that receipt (a refund of a delivered
# message, or a charge and "delivered" for one the handset never got). Jasmin never throws ENROUTE ("Invalid
# message_status"); were one to come, nothing better than submitted could be said of it (docs/providers-smsc.md).
STATUS: dict[str, MessageStatus] = {
    "ESME_ROK": MessageStatus.SUBMITTED,
    "ESME_*": MessageStatus.REJECTED,
    "ACCEPTD": MessageStatus.SUBMITTED,
    "ENROUTE": MessageStatus.SUBMITTED,
    "DELIVRD": MessageStatus.DELIVERED,
    "EXPIRED": MessageStatus.EXPIRED,
    "DELETED": MessageStatus.FAILED,
    "UNDELIV": MessageStatus.FAILED,
    "UNKNOWN": MessageStatus.SUBMITTED,
    "REJECTD": MessageStatus.REJECTED,
}
# The submit_sm_resp statuses Jasmin's SMPP client requeues and submits again itself: its sm-listener's
# `submit_error_retrial` defaults (jasmin/managers/configs.py). Jasmin throws the first such answer as a level-1 DLR
# and then drops the DLR request, so no later report comes: the message stays submitted, still charged, until the
# DLR wait settles it. An operator who changes `submit_error_retrial` sets the upstream's `retried_statuses`.
RETRIED_STATUSES = frozenset({"ESME_RSYSERR", "ESME_RTHROTTLED", "ESME_RMSGQFUL", "ESME_RINVSCHED"})
_NO_ERROR = {"", "0", "00", "000", "ND"}
# How Jasmin's refusals of our account begin: AuthenticationError (403, our username or password) and the
# CredentialValidationError of a missing permission of our Jasmin user (400, jasmin/protocols/http/validation.py).
_OUR_ACCOUNT_REFUSED = ("authentication failure", "authorization failed")
_SUCCESS = re.compile(r'^Success\s+"([^"]+)"')
_ERROR = re.compile(r'^Error\s+"(.*)"', re.DOTALL)

# GSM 03.38 default alphabet by code, and its extension table: an MO with data_coding 0 carries these septets.
_GSM7 = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = {0x0A: "\f", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\", 0x3C: "[", 0x3D: "~", 0x3E: "]"}
_GSM7_EXTENSION |= {0x40: "|", 0x65: "€"}


class JasminProvider:
    # No upstream-id link needed: our reference rides in the dlr-url.
    echoes_client_ref = True

    # Not part of the Provider port: the body the webhook should answer Jasmin's callbacks with (see the docs).
    callback_ack = CALLBACK_ACK

    def __init__(
        self,
        *,
        name: str,
        url: str,
        username: str,
        password: str,
        callback_token: str,
        previous_callback_tokens: list[str] | None = None,
        dlr_level: int = DLR_LEVEL_BOTH,
        mo_charset: str = MO_GSM7,
        retried_statuses: Iterable[str] = RETRIED_STATUSES,
        max_parts: int = DEFAULT_MAX_PARTS,
        gateway_errors: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if len(callback_token) < 16:
            raise ValueError(f"upstream {name!r}: callback_token (16 characters or more) verifies Jasmin's callbacks")
        for field, value in (("username", username), ("password", password)):
            size = len(value.encode())
            if not 1 <= size <= MAX_CREDENTIAL_LENGTH or "\n" in value:
                # Jasmin's /send refuses it (400) on every submit, quoting it: refused here, where nothing is sent.
                # Until session 34 characters were counted: 15 with umlauts passed, and every message failed there.
                raise ValueError(
                    f"upstream {name!r}: {field} is 1 to {MAX_CREDENTIAL_LENGTH} characters, counted as UTF-8 bytes "
                    f"(Jasmin's /send takes no more; a non-ASCII letter counts 2, the euro 3) and no line break, not "
                    f"{size} bytes"
                )
        if dlr_level != DLR_LEVEL_BOTH:
            # Level 1 is the SMSC's acceptance only: no message would get a final report, and each would be expired
            # and refunded after the DLR wait, delivered or not (logic/settle.py). Level 2 throws nothing for a
            # submit the SMSC refuses (no level-1 report, and no terminal receipt follows: jasmin/managers/dlr.py),
            # so such a message would wait out the DLR wait and expire instead of being rejected at once.
            raise ValueError(
                f"upstream {name!r}: dlr_level is 3 (the SMSC's answer and the terminal report), not {dlr_level!r}: "
                "with 1 no message gets a final report, with 2 a message the SMSC refuses gets none"
            )
        if mo_charset != MO_GSM7:
            codecs.lookup(mo_charset)  # an unknown codec fails at configuration, not on the first MO
        retried = _esme_statuses(name, retried_statuses)
        self._max_parts = max_parts_setting(name, max_parts, DEFAULT_MAX_PARTS)
        self._gateway_errors = gateway_errors_setting(name, gateway_errors)
        self.name = name
        self.url = url.rstrip("/")
        # Parsed once: httpx parses a URL given as a string on every request.
        self._send_url = httpx.URL(f"{self.url}{SEND_PATH}")
        self._username = username
        self._password = password
        self._token = callback_token
        # The current token first; the replaced ones are still taken (tokens.py).
        self._tokens = (callback_token, *previous_tokens_setting(name, previous_callback_tokens))
        self._dlr_level = dlr_level
        self._mo_charset = mo_charset
        self._retried = retried
        self._client = client

    @classmethod
    def from_config(
        cls, name: str, config: Mapping[str, Any], *, client: httpx.AsyncClient | None = None
    ) -> JasminProvider:
        return cls(
            name=name,
            url=str(config["url"]),
            username=str(config["username"]),
            password=str(config["password"]),
            callback_token=str(config["callback_token"]),
            previous_callback_tokens=config.get("previous_callback_tokens"),
            dlr_level=int(config.get("dlr_level", DLR_LEVEL_BOTH)),
            mo_charset=str(config.get("mo_charset") or MO_GSM7),
            retried_statuses=config.get("retried_statuses", RETRIED_STATUSES),
            max_parts=config.get("max_parts", DEFAULT_MAX_PARTS),
            gateway_errors=config.get("gateway_errors"),
            client=client,
        )

    def dlr_url(self, base: str, client_ref: str) -> str:
        separator = "&" if "?" in base else "?"
        return f"{base}{separator}ref={quote(client_ref, safe='')}&token={quote(self._token, safe='')}"

    async def submit(self, request: SubmitRequest) -> SubmitResult:
        # Jasmin's HTTP API takes no UDH: it cuts a long text itself, blind to characters (its SubmitSM slices the
        # octets every 153, or 134 for UCS-2), and sends as many parts as that makes, which is what its limit bounds.
        # A UCS-2 text it would cut through an emoji goes padded so that it cuts it where we counted it; a GSM-7
        # escape pair on its boundary is still split (docs/providers-smsc.md).
        text = padded_for_blind_cut(request.text)
        segmentation = segment(text)
        refuse_longer(self.name, segmentation.blind_parts, self._max_parts)
        form: dict[str, str] = {
            "username": self._username,
            "password": self._password,
            "to": request.msisdn.lstrip("+"),
            "from": request.sender,
        }
        if segmentation.encoding is Encoding.UCS2:
            # UCS-2 travels as hex so that no form decoding or charset guess stands between us and the SMSC.
            form["coding"] = CODING_UCS2
            form["hex-content"] = text.encode("utf-16-be").hex()
        else:
            # Jasmin converts UTF-8 content to GSM 03.38 itself when coding is 0.
            form["coding"] = CODING_DEFAULT
            form["content"] = text
        if request.validity_minutes is not None:
            # Minutes, passed on to the SMSC as the message's validity period.
            form["validity-period"] = str(request.validity_minutes)
        if request.dlr_url:
            form |= {
                "dlr": "yes",
                "dlr-url": self.dlr_url(request.dlr_url, request.client_ref),
                "dlr-level": str(self._dlr_level),
                "dlr-method": "POST",
            }
        else:
            form["dlr"] = "no"
        client = self._client or async_client()
        try:
            response = await client.post(self._send_url, data=form)
        except httpx.TransportError as error:
            raise no_answer(self.name, error) from error
        body = response.text.strip()
        refused = _ERROR.match(body)
        # Only the text that goes into errors and logs is scrubbed: a short password could occur in the id Jasmin
        # answers ("Success" included), which is read from the raw body below.
        reason = scrubbed(refused.group(1) if refused else body, (self._password,), limit=200)
        # Jasmin's own 500/503 (its SMPP client manager or interceptor) sent nothing; a proxy's 502/504 may have or
        # not, as its gateway_errors says.
        failure = not_about_the_message(
            f"{self.name} answered {response.status_code}: {reason}", response, gateway_errors=self._gateway_errors
        )
        if failure is not None:
            raise failure
        if response.status_code == 403 and "throughput exceeded" in reason.lower():
            # The user's http_throughput quota: come back shortly to the same upstream.
            raise UpstreamError(f"{self.name} throttled: {reason}", permanent=False, retry_after=1.0)
        if response.status_code == 403 and "cannot charge" in reason.lower():
            # Our balance at the upstream ran out: not the message's fault, another upstream may take it.
            raise refuses_our_account(f"{self.name} cannot charge us: {reason}")
        if response.status_code in (400, 403) and reason.lower().startswith(_OUR_ACCOUNT_REFUSED):
            # Our username or password (403), or our Jasmin user's permissions (400: sending long content, setting
            # the DLR level, the sender, the validity): our setup, not the message.
            raise refuses_our_account(f"{self.name} refused our credentials ({response.status_code}): {reason}")
        if response.status_code == 412 and "no bound connector" in reason.lower():
            # A failover route whose SMPP binds are all down (ConnectorNotFoundError): an outage, not a refusal.
            raise UpstreamError(f"{self.name} cannot reach its SMSC: {reason}", permanent=False, unavailable=True)
        if response.status_code == 412:
            # "No route found": Jasmin's MT routing table has no route for this number; another upstream may have one.
            raise not_sent_there(f"{self.name} has no route for the message ({response.status_code}): {reason}")
        if response.status_code >= 400:
            # 400 validation, or a value filter of our Jasmin user refusing this number, sender or content.
            raise UpstreamError(f"{self.name} refused the message ({response.status_code}): {reason}", permanent=True)
        accepted = _SUCCESS.match(body)
        if response.is_success and accepted is None:
            # Jasmin (or a proxy in front of it) took the request: sent again, Jasmin would send the SMS twice.
            raise unreadable_take(self.name, f'answered {response.status_code} without Success "<id>"')
        if response.status_code != 200 or accepted is None:
            raise UpstreamError(f"{self.name} gave an unexpected answer {response.status_code}", permanent=False)
        return SubmitResult(upstream_message_id=accepted.group(1))

    def verify_callback(self, request: CallbackRequest) -> bool:
        return token_verified(request, self._tokens)

    def parse_delivery_reports(self, request: CallbackRequest) -> list[DeliveryReport]:
        fields = _fields(request)
        message_id = fields.get("id")
        state = fields.get("message_status", "").strip().upper()
        if not message_id or not state:
            raise CallbackRejected("not a Jasmin DLR: id and message_status are required")
        submit_error = state.startswith("ESME_") and state != "ESME_ROK"
        # A submit error Jasmin retries is no refusal: the message stays submitted, the error noted as its error_code.
        status = MessageStatus.SUBMITTED if state in self._retried else STATUS.get(state)
        if status is None and submit_error:
            status = STATUS["ESME_*"]
        if status is None:
            raise CallbackRejected(f"unknown Jasmin message_status {state!r}")
        error = fields.get("err", "").strip()
        error_code = None
        if submit_error:
            error_code = state
        elif status is not MessageStatus.SUBMITTED and status is not MessageStatus.DELIVERED and error not in _NO_ERROR:
            error_code = error
        return [
            DeliveryReport(
                upstream=self.name,
                upstream_message_id=message_id,
                client_ref=request.query.get("ref") or None,
                status=status,
                error_code=error_code,
                reported_at=_smsc_time(fields.get("donedate")),
                settles_as=settles_as(state),
            )
        ]

    def parse_inbound(self, request: CallbackRequest) -> InboundSms:
        fields = _fields(request)
        sender, to = fields.get("from", ""), fields.get("to", "")
        if not sender or not to or ("content" not in fields and "binary" not in fields):
            raise CallbackRejected("not a Jasmin MO: from, to and content are required")
        return InboundSms(
            upstream=self.name,
            upstream_message_id=fields.get("id") or None,
            msisdn=sender,
            to=to.lstrip("+"),
            text=_mo_text(fields, self._mo_charset),
            received_at=iso(datetime.now(UTC)),
        )


def _esme_statuses(name: str, statuses: Iterable[str]) -> frozenset[str]:
    """The SMPP command statuses of a `retried_statuses` setting (a list of ESME_* names, ESME_ROK not one)."""
    if not isinstance(statuses, list | tuple | set | frozenset) or not all(isinstance(s, str) for s in statuses):
        raise ValueError(f"upstream {name!r}: retried_statuses is a list of ESME_* statuses, not {statuses!r}")
    upper = frozenset(status.strip().upper() for status in statuses)
    wrong = sorted(status for status in upper if not status.startswith("ESME_") or status == "ESME_ROK")
    if wrong:
        raise ValueError(f"upstream {name!r}: retried_statuses names submit errors (ESME_*), not {wrong}")
    return upper


def _fields(request: CallbackRequest) -> dict[str, str]:
    """Form fields of a POST body (dlr-method POST, connector method POST) over the query string (GET)."""
    fields = dict(request.query)
    if request.body:
        fields |= dict(parse_qsl(request.body, keep_blank_values=True, encoding="latin-1"))
    return fields


def _coding(value: str | None) -> int:
    """data_coding as the raw byte (`coding=%08`: what a real Jasmin 0.11.0 posted), or as decimal text."""
    if not value:
        return 0
    if ascii_digits(value):
        # data_coding is one byte: a longer number is none we know (and int() refuses past 4300 digits).
        return int(value) if len(value) <= 3 else 0
    return ord(value[0]) if len(value) == 1 else 0


def _mo_text(fields: dict[str, str], default_charset: str) -> str:
    binary = fields.get("binary")
    if binary is not None:
        try:
            raw = bytes.fromhex(binary)
        except ValueError as error:
            raise CallbackRejected("not a Jasmin MO: binary is not hexadecimal") from error
    else:
        # Percent-decoded as latin-1 above, so each character is one byte of short_message.
        raw = fields["content"].encode("latin-1", errors="replace")
    coding = _coding(fields.get("coding"))
    if coding == 8:
        return raw.decode("utf-16-be", errors="replace")
    if coding == 3:
        return raw.decode("latin-1")
    if coding == 0:
        # The "SMSC default alphabet": GSM 03.38 septets by the SMPP spec; some SMSCs send ASCII or Latin-1.
        if default_charset == MO_GSM7:
            return _gsm7(raw) if all(byte < 0x80 for byte in raw) else raw.decode("latin-1")
        return raw.decode(default_charset, errors="replace")
    return raw.decode("utf-8", errors="replace")


def _gsm7(raw: bytes) -> str:
    out: list[str] = []
    escape = False
    for byte in raw:
        if escape:
            out.append(_GSM7_EXTENSION.get(byte, " "))
            escape = False
        elif byte == 0x1B:
            escape = True
        else:
            out.append(_GSM7[byte])
    return "".join(out)


def _smsc_time(value: str | None) -> str | None:
    """An SMSC receipt date, YYMMDDhhmm (or with seconds), taken as UTC."""
    if not value or not value.isdigit() or len(value) not in (10, 12):
        return None
    try:
        moment = datetime.strptime(value, "%y%m%d%H%M%S" if len(value) == 12 else "%y%m%d%H%M").replace(tzinfo=UTC)
    except ValueError:
        return None
    return iso(moment)

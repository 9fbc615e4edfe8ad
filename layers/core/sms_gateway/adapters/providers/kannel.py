"""Kannel (smsbox) as an upstream: `sendsms` submits, DLRs and MO SMS called back on URLs we give it.

References (Kannel user guide, https://www.kannel.org/download/kannel-userguide-snapshot/userguide.html; the 1.4.5
edition read from Debian's kannel-docs, /usr/share/doc/kannel-docs/userguide/userguide.html):
- "SMS Push (send-sms)": `GET /cgi-bin/sendsms` CGI variables (Table 7-17) and reply codes (Table 7-16):
  `202 0: Accepted for delivery`, `202 3: Queued for later delivery`, `4xx <reason>`, `503 Temporal failure`.
  Kannel cuts a long UCS-2 text every 134 octets, blind to characters: a text it would cut through an emoji goes
  padded so that it cuts it where we counted it (`submit`).
- "SMS Delivery Reports" (chapter 10) and "Parameters (Escape Codes)" (Table 7-10): `dlr-mask` bits
  1 delivered, 2 failed, 4 buffered, 8 SMSC submit, 16 SMSC reject; the `dlr-url` is fetched with GET after
  `%d` (type), `%A` (the SMSC's receipt text), `%T` (epoch), `%p`/`%P` and the others are filled in.
- A long message Kannel cuts asks the SMSC for a receipt of its first part only (gw/sms.c `sms_split`: "if its a
  DLR request message getting split, only ask DLR for the first one"): its reports are the message's.
- "sms-service" `post-url` with the same escape codes, text in the body and X-Kannel headers (Table 7-12).

Kannel's answer carries no message id, so our client reference travels in the DLR URL's query string together
with a per-upstream secret token; the upstream message id we record is the client reference itself.
Checked against Debian's Kannel 1.4.5 (bearerbox + smsbox, with fakesmsc and with an SMPP SMSC: the check in
tools/sms_gateway_tools/kannel_check.py): see docs/providers-smsc.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from sms_gateway.adapters.http import (
    async_client,
    gateway_errors_setting,
    no_answer,
    not_about_the_message,
    not_sent_there,
    refuses_our_account,
    scrubbed,
)
from sms_gateway.adapters.providers.parts import max_parts_setting, refuse_longer
from sms_gateway.adapters.providers.receipts import settles_as
from sms_gateway.adapters.providers.tokens import previous_tokens_setting, token_verified
from sms_gateway.domain.ids import epoch_seconds
from sms_gateway.domain.models import (
    CallbackRequest,
    DeliveryReport,
    InboundSms,
    SubmitRequest,
    SubmitResult,
    iso,
)
from sms_gateway.domain.segments import Encoding, padded_for_blind_cut, segment
from sms_gateway.domain.status import TERMINAL, MessageStatus
from sms_gateway.errors import CallbackRejected, UpstreamError

SENDSMS_PATH = "/cgi-bin/sendsms"
# Every report type: delivered, failed, buffered, SMSC submit, SMSC reject.
DEFAULT_DLR_MASK = 31
# The handset's final reports (delivered 1, failed 2): a mask without both leaves messages with no final report, each
# expired and refunded after the DLR wait however it went (logic/settle.py).
FINAL_REPORTS_MASK = 1 | 2
# The sendsms-user's `max-messages` when it sets none: Kannel sends that many parts of a longer text, drops the rest
# and still answers `202 0: Accepted for delivery`. An upstream whose max-messages is higher says so in max_parts.
DEFAULT_MAX_PARTS = 1
# How smsbox's 403 answers begin when it refuses our sendsms-user, and when no SMSC of its bearerbox routes the number.
AUTHORIZATION_FAILED = "Authorization failed"
NOT_ROUTABLE = "Not routable"
# Kannel's `coding` CGI variable: 0 = 7-bit (GSM), 2 = UCS-2.
CODING_GSM7, CODING_UCS2 = "0", "2"

# The one status table: Kannel's `%d` report types (as decimal strings) and the SMSC receipt's `stat:` words
# found in `%A`. A `stat:` word refines a failure (type 2) into expired or rejected; the type decides the rest.
# Kannel's smsc_smpp.c reports ACCEPTD as buffered (type 4, DLR_BUFFERED, with ENROUTE), keeps its DLR entry after it
# and fetches the SMSC's next receipt too: submitted, that receipt deciding, as through Jasmin (receipts.py: a
# message left at ACCEPTD when the DLR wait ends is delivered). Until session 35 it made the message
# delivered at once, and an UNDELIV after it left the message delivered and charged. UNKNOWN comes as a failure
# (type 2, DLR_FAIL), after which Kannel drops its DLR entry: no receipt follows, so it is Kannel's last word.
STATUS: dict[str, MessageStatus] = {
    "1": MessageStatus.DELIVERED,  # delivered to phone
    "2": MessageStatus.FAILED,  # non-delivered to phone
    "4": MessageStatus.SUBMITTED,  # buffered (queued on the SMSC)
    "8": MessageStatus.SUBMITTED,  # SMSC submit (accepted by the SMSC)
    "16": MessageStatus.REJECTED,  # SMSC reject (submit_sm refused)
    "DELIVRD": MessageStatus.DELIVERED,
    "EXPIRED": MessageStatus.EXPIRED,
    "REJECTD": MessageStatus.REJECTED,
    "UNDELIV": MessageStatus.FAILED,
    "DELETED": MessageStatus.FAILED,
    "UNKNOWN": MessageStatus.SUBMITTED,
    "ACCEPTD": MessageStatus.SUBMITTED,
    "ENROUTE": MessageStatus.SUBMITTED,
}
# Kannel's report types are bits; a value may carry extra flags (0x20 expired, 0x40 unknown, on type 2).
_TYPE_BITS = (1, 2, 16, 4, 8)
_RECEIPT_FIELD = re.compile(r"\b(stat|err)\s*:\s*([A-Za-z0-9_]+)", re.IGNORECASE)
# The receipt's last field, `text:` (SMPP v3.4 appendix B: the first 20 characters of the message), is the sender's
# own words: nothing after it is the SMSC's.
_RECEIPT_TEXT = re.compile(r"\btext\s*:", re.IGNORECASE)
# An SMSC reject's `%A` (type 16): "NACK/" and, from an SMPP SMSC, the submit_sm_resp command status and its name
# (smsc_smpp.c: "0x%08lx/%s"). The status is the reject's error code.
_NACK_STATUS = re.compile(r"NACK/(0x[0-9A-Fa-f]{1,8})\b")
_NO_ERROR = {"", "0", "00", "000", "ND"}
_URL_SAFE = re.compile(r"[A-Za-z0-9._~-]{16,}")


class KannelProvider:
    # No upstream-id link needed: our reference rides in the dlr-url.
    echoes_client_ref = True

    def __init__(
        self,
        *,
        name: str,
        url: str,
        username: str,
        password: str,
        callback_token: str,
        previous_callback_tokens: list[str] | None = None,
        smsc: str | None = None,
        dlr_mask: int = DEFAULT_DLR_MASK,
        max_parts: int = DEFAULT_MAX_PARTS,
        gateway_errors: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not _URL_SAFE.fullmatch(callback_token):
            # Kannel expands `%` escapes in the DLR URL: a token that needs percent-encoding would be mangled.
            raise ValueError(f"upstream {name!r}: callback_token must be 16 or more of A-Z a-z 0-9 - _ . ~")
        if not 0 < dlr_mask < 256 or dlr_mask & FINAL_REPORTS_MASK != FINAL_REPORTS_MASK:
            raise ValueError(
                f"upstream {name!r}: dlr_mask {dlr_mask!r} must ask for the final reports (delivered 1 and failed 2, "
                f"within 1-255; default {DEFAULT_DLR_MASK}): without them every message would be expired and "
                "refunded after the DLR wait, delivered or not"
            )
        self._max_parts = max_parts_setting(name, max_parts, DEFAULT_MAX_PARTS)
        self._gateway_errors = gateway_errors_setting(name, gateway_errors)
        self.name = name
        self.url = url.rstrip("/")
        # Parsed once: httpx parses a URL given as a string on every request.
        self._send_url = httpx.URL(f"{self.url}{SENDSMS_PATH}")
        self._username = username
        self._password = password
        self._token = callback_token
        # The current token first; the replaced ones are still taken (tokens.py).
        self._tokens = (callback_token, *previous_tokens_setting(name, previous_callback_tokens))
        self._smsc = smsc
        self._dlr_mask = dlr_mask
        self._client = client

    @classmethod
    def from_config(
        cls, name: str, config: Mapping[str, Any], *, client: httpx.AsyncClient | None = None
    ) -> KannelProvider:
        return cls(
            name=name,
            url=str(config["url"]),
            username=str(config["username"]),
            password=str(config["password"]),
            callback_token=str(config["callback_token"]),
            previous_callback_tokens=config.get("previous_callback_tokens"),
            smsc=config.get("smsc") or None,
            dlr_mask=int(config.get("dlr_mask", DEFAULT_DLR_MASK)),
            max_parts=config.get("max_parts", DEFAULT_MAX_PARTS),
            gateway_errors=config.get("gateway_errors"),
            client=client,
        )

    def dlr_url(self, base: str, client_ref: str) -> str:
        """The URL Kannel fetches for each report: our reference and token, then Kannel's escape codes. The same
        for a message of any length: Kannel reports a long message by its first part (`parse_delivery_reports`)."""
        separator = "&" if "?" in base else "?"
        return (
            f"{base}{separator}ref={quote(client_ref, safe='')}&token={self._token}"
            "&type=%d&answer=%A&ts=%T&smsc=%i&to=%p&from=%P"
        )

    async def submit(self, request: SubmitRequest) -> SubmitResult:
        """One sendsms, Kannel cutting a long text, where it cuts it as the gateway counted and charged it
        (domain/segments.py): Kannel keeps GSM-7 escape pairs whole, and cuts UCS-2 every 67 units blind to
        characters, so a text with an emoji's surrogate pair across a 67-unit boundary goes padded with a zero width
        space before that emoji (`padded_for_blind_cut`): Kannel then cuts it as `split` does."""
        segmentation = segment(request.text)
        refuse_longer(self.name, segmentation.parts, self._max_parts)
        ucs2 = segmentation.encoding is Encoding.UCS2
        params: dict[str, str] = {
            "username": self._username,
            "password": self._password,
            "from": request.sender,
            "to": request.msisdn.lstrip("+"),
            "text": padded_for_blind_cut(request.text),
            "charset": "UTF-8",
            "coding": CODING_UCS2 if ucs2 else CODING_GSM7,
        }
        if self._smsc:
            params["smsc"] = self._smsc
        if request.validity_minutes is not None:
            # Minutes the SMSC should keep trying: it then gives up and reports the message expired.
            params["validity"] = str(request.validity_minutes)
        if request.dlr_url:
            params["dlr-mask"] = str(self._dlr_mask)
            params["dlr-url"] = self.dlr_url(request.dlr_url, request.client_ref)
        client = self._client or async_client()
        try:
            response = await client.get(self._send_url, params=params)
        except httpx.TransportError as error:
            raise no_answer(self.name, error) from error
        answer = scrubbed(response.text.strip(), (self._password,))
        # Kannel's own 503 "Temporal failure" sent nothing; a proxy's 502/504 in front of smsbox may have or not, as
        # its gateway_errors says.
        failure = not_about_the_message(
            f"{self.name} answered {response.status_code}: {answer}", response, gateway_errors=self._gateway_errors
        )
        if failure is not None:
            raise failure
        if response.status_code == 403 and answer.startswith(AUTHORIZATION_FAILED):
            # Our sendsms-user's username or password: our setup, not the message.
            raise refuses_our_account(f"{self.name} refused our credentials: {answer}")
        if response.status_code == 403 and answer.startswith(NOT_ROUTABLE):
            # No SMSC of this bearerbox takes the number (its smsc-id routing): another upstream may.
            raise not_sent_there(f"{self.name} has no route for the message: {answer}")
        if response.status_code == 403:
            # Kannel's own 403s are the two above: any other is a proxy or firewall in front of smsbox refusing us.
            raise refuses_our_account(f"{self.name} answered 403, not in Kannel's words: {answer}")
        if response.status_code >= 400:
            # "Missing receiver number, rejected", "Number(s) has/have been denied by white- and/or black-lists.":
            # no retry changes these.
            raise UpstreamError(f"{self.name} refused the message: {answer}", permanent=True)
        if not 200 <= response.status_code < 300:
            raise UpstreamError(f"{self.name} answered {response.status_code}", permanent=False, unavailable=True)
        # A 2xx is a take: `202 0: Accepted for delivery`, or `202 3: Queued for later delivery` while no SMSC is
        # connected. No id comes back: our reference is the id (it also rides in the DLR URL).
        return SubmitResult(upstream_message_id=request.client_ref)

    def verify_callback(self, request: CallbackRequest) -> bool:
        return token_verified(request, self._tokens)

    def parse_delivery_reports(self, request: CallbackRequest) -> list[DeliveryReport]:
        """One report of the whole message, however many parts Kannel cut it into: Kannel asks the SMSC for a
        receipt of a long message's first part only, and its SMSC reject (type 16) and submit (8) reports come once
        for all parts, so that part's report is the message's (as Jasmin's one report is). A URL with a `part` (`%F`,
        given to long messages from 2026-12-06 until session 35) names the first part whatever the report: it is
        ignored, or such a message, waiting for parts never reported, expired and was refunded after the DLR wait."""
        query = request.query
        ref = query.get("ref")
        if not ref:
            raise CallbackRejected("not a Kannel DLR: no ref in the query string")
        answer = query.get("answer", "")
        receipt = _receipt_fields(answer)
        stat = receipt.get("stat", "").upper()
        status = self._status(query.get("type", ""), stat)
        nack = _NACK_STATUS.match(answer)
        error = nack.group(1) if nack else receipt.get("err", "")
        failed = status in TERMINAL and status is not MessageStatus.DELIVERED
        return [
            DeliveryReport(
                upstream=self.name,
                upstream_message_id=ref,
                client_ref=ref,
                status=status,
                error_code=error if failed and error not in _NO_ERROR else None,
                reported_at=_epoch(query.get("ts")),
                # A buffered report's receipt (ACCEPTD): how the message ends if no other comes.
                settles_as=settles_as(stat) if status is MessageStatus.SUBMITTED else None,
            )
        ]

    @staticmethod
    def _status(dlr_type: str, stat: str) -> MessageStatus:
        try:
            value = int(dlr_type)
        except ValueError as error:
            raise CallbackRejected(f"not a Kannel DLR type: {dlr_type!r}") from error
        bit = next((bit for bit in _TYPE_BITS if value & bit), None)
        if bit is None:
            raise CallbackRejected(f"unknown Kannel DLR type {value}")
        status = STATUS[str(bit)]
        if bit == 2:
            refined = STATUS.get(stat)
            if refined in (MessageStatus.EXPIRED, MessageStatus.REJECTED):
                return refined
            if value & 0x20:  # Kannel's DLR_EXPIRED flag
                return MessageStatus.EXPIRED
        return status

    def parse_inbound(self, request: CallbackRequest) -> InboundSms:
        query = request.query
        headers = request.headers
        sender = query.get("from") or headers.get("x-kannel-from") or ""
        to = query.get("to") or headers.get("x-kannel-to") or ""
        if not sender or not to:
            raise CallbackRejected("not a Kannel MO: from and to are required")
        return InboundSms(
            upstream=self.name,
            upstream_message_id=query.get("id") or None,
            msisdn=sender,
            to=to.lstrip("+"),
            text=_inbound_text(request),
            received_at=_epoch(query.get("ts")) or iso(datetime.now(UTC)),
        )


def _receipt_fields(answer: str) -> dict[str, str]:
    """`stat` and `err` of an SMSC receipt (`id:… stat:UNDELIV err:001 text:…`), read before its `text:` field and
    each the first given: the quoted message may say "stat:" or "err:" itself."""
    fields: dict[str, str] = {}
    for key, value in _RECEIPT_FIELD.findall(_RECEIPT_TEXT.split(answer, maxsplit=1)[0]):
        fields.setdefault(key.lower(), value)
    return fields


def _inbound_text(request: CallbackRequest) -> str:
    """`text_hex` (%e, the exact bytes) when given, else `text` (%a), else the post-url body."""
    query = request.query
    hexed = query.get("text_hex")
    if hexed is not None:
        try:
            raw = bytes.fromhex(hexed)
        except ValueError as error:
            raise CallbackRejected("not a Kannel MO: text_hex is not hexadecimal") from error
        charset = (query.get("charset") or "").strip().lower()
        if query.get("coding") == CODING_UCS2 or charset in {"utf-16be", "ucs-2", "ucs2"}:
            return raw.decode("utf-16-be", errors="replace")
        if charset in {"windows-1252", "cp1252", "iso-8859-1", "latin1"}:
            return raw.decode("cp1252", errors="replace")
        return raw.decode("utf-8", errors="replace")
    if "text" in query:
        return query["text"]
    return request.body


def _epoch(value: str | None) -> str | None:
    """Kannel's `%T` as a time; None (not known) for anything that is not Unix seconds of a year datetime can hold:
    before, a `ts` of over 4300 digits, or of a year past 9999, raised and the callback was a 500."""
    seconds = epoch_seconds((value or "").strip())
    if seconds is None:
        return None
    try:
        return iso(datetime.fromtimestamp(seconds, UTC))
    except (ValueError, OverflowError, OSError):
        return None

"""Opt-out keywords (STOP, START, ...): what an inbound SMS asks for, and the opt-out records they leave."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from enum import StrEnum

from sms_gateway.domain.models import Record
from sms_gateway.domain.senders import registry_form

# The sender of an opt-out from every sender of the account (STOPALL).
ALL_SENDERS = "*"
# The keyword an operator's opt-out (`sms-gateway admin opt-out`) is recorded with.
OPERATOR = "OPERATOR"

OPT_OUT_KEYWORDS = frozenset({"STOP", "UNSUBSCRIBE", "END", "CANCEL", "QUIT", "STOPALL"})
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP"})


class KeywordAction(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"


@dataclass(frozen=True)
class KeywordRequest:
    """What a keyword SMS asks: opt out of (or back in to) `sender`, which is ALL_SENDERS for STOPALL."""

    action: KeywordAction
    keyword: str
    sender: str


def sender_key(sender: str) -> str:
    """One form per sender, as the sender registry keeps it: numbers with or without '+', ids in any case."""
    return ALL_SENDERS if sender == ALL_SENDERS else registry_form(sender)


def _trimmed(text: str) -> str:
    """Whitespace around the text and punctuation at its end go: "Stop!" and " stop. " are STOP."""
    end = len(text)
    while end and (text[end - 1].isspace() or unicodedata.category(text[end - 1]).startswith("P")):
        end -= 1
    return text[:end].strip()


def keyword_of(text: str) -> str | None:
    """The keyword the whole message is, as carriers read it (case-insensitive), or None: "please stop" is
    a message, not a keyword."""
    word = _trimmed(text)
    # ASCII only, checked before upper-casing: the long s (U+017F) upper-cases to S, and a look-alike letter
    # must not opt a number out by accident.
    if not word.isascii():
        return None
    word = word.upper()
    return word if word in OPT_OUT_KEYWORDS or word in OPT_IN_KEYWORDS else None


def keyword_request(text: str, to: str) -> KeywordRequest | None:
    """The opt-out or opt-in an inbound SMS sent to our sender `to` asks for, or None for any other message
    (HELP included: it is forwarded like any message)."""
    keyword = keyword_of(text)
    if keyword is None:
        return None
    if keyword in OPT_IN_KEYWORDS:
        return KeywordRequest(action=KeywordAction.OPT_IN, keyword=keyword, sender=sender_key(to))
    sender = ALL_SENDERS if keyword == "STOPALL" else sender_key(to)
    return KeywordRequest(action=KeywordAction.OPT_OUT, keyword=keyword, sender=sender)


class OptOut(Record):
    """A number that asked one of the account's senders (or all of them: ALL_SENDERS) to stop."""

    account_id: str
    sender: str
    msisdn: str  # E.164
    keyword: str
    at: str  # ISO 8601 UTC
    inbound_id: int | None = None
    # The account that held the sender when the number opted out, for an opt-out that came with the sender when an
    # operator moved it to this account (add-sender after remove-sender: docs/opt-outs.md, "A sender that moves").
    carried_over_from: str | None = None


def refusal_reason(opt_out: OptOut, sender: str) -> str:
    """Why a send to the number is refused: the number, whom it opted out of, and what it sent when."""
    number = opt_out.msisdn.lstrip("+")
    whom = "every sender of this account" if opt_out.sender == ALL_SENDERS else sender
    how = "recorded by an operator" if opt_out.keyword == OPERATOR else f"{opt_out.keyword} received"
    return f"{number} opted out of messages from {whom} ({how} {opt_out.at[:10]})"

"""Sender IDs: what a valid one looks like, and the one form the sender registry keeps each in."""

from __future__ import annotations

import re

# Alphanumeric, up to 11 characters with at least one letter, spaces only between others (" 48974" or "CINEMA "
# would be look-alikes the registry tells apart); or a number of 3 to 15 digits (shortcode or long code), with or
# without '+'. Without the letter, "1" or "12" passed as an alphanumeric id, though no network takes such a number.
SENDER_ID = re.compile(r"^(?:(?=[A-Za-z0-9 ]*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9 ]{0,9}[A-Za-z0-9])?|\+?[0-9]{3,15})$")


def registry_form(sender: str) -> str:
    """One form per sender: numbers with or without '+', ids in any case, are the same sender."""
    return sender.lstrip("+").upper()


def same_sender(a: str, b: str) -> bool:
    return registry_form(a) == registry_form(b)

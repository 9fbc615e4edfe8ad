"""Fixtures several integration suites share: two accounts on moto, each with its own shortcode and 100 credits."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def account(aws: dict[str, str]) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name="Cinema Club", senders=["48974"], credits=100)


@pytest.fixture
def other_account(aws: dict[str, str]) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name="Other Club", senders=["55555"], credits=100)

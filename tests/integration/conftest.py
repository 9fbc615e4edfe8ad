"""Fixtures several integration suites share: two accounts on moto, each with its own shortcode and 100 credits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest


@contextmanager
def moto_table(stack_name: str) -> Iterator[Any]:
    """A DynamoStore on a moto table of its own, for a class or module of many small tests that each use their own
    keys: far faster than a fresh `aws` per test."""
    from moto import mock_aws

    from sms_gateway.adapters.dynamodb import DynamoStore
    from sms_gateway_tools.localstack.resources import aws_clients, create_resources
    from tests.conftest import no_local_stack_running

    no_local_stack_running()
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_PROFILE"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_REGION", "us-east-1")
        with mock_aws():
            env = create_resources(stack_name=stack_name, simulator_url="http://x:9", api_url="http://x:8")
            client = aws_clients(None, ["dynamodb"])["dynamodb"]
            yield DynamoStore(env["TABLE_NAME"], client=client)


@pytest.fixture
def account(aws: dict[str, str]) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name="Cinema Club", senders=["48974"], credits=100)


@pytest.fixture
def other_account(aws: dict[str, str]) -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name="Other Club", senders=["55555"], credits=100)

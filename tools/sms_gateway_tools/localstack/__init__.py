"""The local stack: embedded moto, the real handlers behind an API Gateway v2 bridge, SQS pollers,
a scheduler loop and the upstream simulator, all in one process (see docs/local-stack.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sms_gateway_tools.localstack.stack import LocalStack, read_stack_file

__all__ = ["LocalStack", "read_stack_file"]


def __getattr__(name: str) -> Any:
    # Lazy, so `sms_gateway_tools.simulator` can use the HTTP helpers here without an import cycle.
    if name in __all__:
        from sms_gateway_tools.localstack import stack

        return getattr(stack, name)
    raise AttributeError(name)

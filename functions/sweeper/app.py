"""`sweeper`: on a schedule, queues the client notifications of inbound SMS whose callback did not queue them, and
of delivery reports whose announcement the notify queue refused; and releases scheduled batches whose schedule was
never made."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from sms_gateway.observability import capture_lambda_handler, logger, metrics
from sms_gateway.sweeps import sweep


@logger.inject_lambda_context(log_event=False)
@capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    return sweep(event, context)

"""`scheduled_dispatch`: invoked by a one-time EventBridge schedule; releases the batch unless cancelled."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from sms_gateway.observability import capture_lambda_handler, logger, metrics
from sms_gateway.schedules import release_schedule


# Never the event: it carries phone numbers and credentials, whatever POWERTOOLS_LOGGER_LOG_EVENT says.
@logger.inject_lambda_context(log_event=False)
@capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    return release_schedule(event)

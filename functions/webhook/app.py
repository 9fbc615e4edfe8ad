"""`webhook`: upstream callbacks (DLRs and inbound SMS), verified, applied, and queued for the client."""

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from sms_gateway.dialects.callbacks import app
from sms_gateway.observability import capture_lambda_handler, logger, metrics


# Never the event: it carries phone numbers and credentials, whatever POWERTOOLS_LOGGER_LOG_EVENT says.
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    return app.resolve(event, context)

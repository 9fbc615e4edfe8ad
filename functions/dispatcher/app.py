"""`dispatcher`: submits queued messages to their upstream; FIFO per message group, partial batch failures."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from sms_gateway.consumers import dispatch_records
from sms_gateway.observability import capture_lambda_handler, logger, metrics


# Never the event: it carries phone numbers and credentials, whatever POWERTOOLS_LOGGER_LOG_EVENT says.
@logger.inject_lambda_context(log_event=False)
@capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    # Records of different groups go concurrently and a failed record holds back only its own group's later
    # records (SqsFifoPartialProcessor(skip_group_on_error=True)'s contract, without handling one record at a time).
    return dispatch_records(event, context.get_remaining_time_in_millis)

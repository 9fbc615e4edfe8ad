"""`notifier`: POSTs delivery reports and inbound SMS to the client's webhook; failures are retried."""

from aws_lambda_powertools.utilities.batch import AsyncBatchProcessor, EventType, async_process_partial_response
from aws_lambda_powertools.utilities.typing import LambdaContext

from sms_gateway.consumers import notify_record_alongside_others
from sms_gateway.observability import capture_lambda_handler, logger, metrics

# The batch's records concurrently (a notification has no order to keep: the notify queue is a standard queue).
# Report every failed record by id rather than raising, so SQS retries exactly those.
processor = AsyncBatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


# Never the event: it carries phone numbers and credentials, whatever POWERTOOLS_LOGGER_LOG_EVENT says.
@logger.inject_lambda_context(log_event=False)
@capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    return async_process_partial_response(
        event=event,
        record_handler=notify_record_alongside_others,
        processor=processor,
        context=context,
    )

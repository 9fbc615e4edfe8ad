"""`dispatcher`: submits queued messages to their upstream; FIFO per account, partial batch failures."""

from aws_lambda_powertools.utilities.batch import SqsFifoPartialProcessor, process_partial_response
from aws_lambda_powertools.utilities.typing import LambdaContext

from sms_gateway.consumers import dispatch_record
from sms_gateway.observability import capture_lambda_handler, logger, metrics

# One account's failure must not hold up another's: skip only the failed record's message group.
processor = SqsFifoPartialProcessor(skip_group_on_error=True)
# Report every failed record by id rather than raising, so SQS retries exactly those.
processor.raise_on_entire_batch_failure = False


# Never the event: it carries phone numbers and credentials, whatever POWERTOOLS_LOGGER_LOG_EVENT says.
@logger.inject_lambda_context(log_event=False)
@capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    return process_partial_response(
        event=event,
        record_handler=dispatch_record,
        processor=processor,
        context=context,
    )

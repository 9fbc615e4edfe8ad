"""Domain errors with stable codes; each dialect maps them to its own wire format in one table."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error a caller may see. `code` is stable: dialect tables key on it."""

    code = "gateway_error"

    def __init__(self, message: str, *, logged: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The message as a log line may carry it. An answer quotes what the client typed (a refused number, as
        # written) so the client sees which entry is wrong; `logged` says the same without it.
        self.logged = message if logged is None else logged


class Unauthorized(GatewayError):
    code = "unauthorized"


class TooManyAttempts(GatewayError):
    """Too many failed logins for one username in the current window, or too many of its logins at once: refused
    before the password is checked."""

    code = "too_many_attempts"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidRequest(GatewayError):
    code = "invalid_request"


class InvalidSender(GatewayError):
    code = "invalid_sender"


class InvalidRecipient(GatewayError):
    code = "invalid_recipient"


class InsufficientCredits(GatewayError):
    code = "insufficient_credits"


class PayloadTooLarge(GatewayError):
    code = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    code = "unsupported_media_type"


class NotFound(GatewayError):
    code = "not_found"


class MethodNotAllowed(GatewayError):
    """A path the api serves, asked with a method none of its routes takes: `allowed` lists the ones they take."""

    code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: list[str]) -> None:
        super().__init__(message)
        self.allowed = allowed

    @classmethod
    def asked(cls, path: str, method: str, allowed: list[str]) -> MethodNotAllowed:
        """`path` asked with `method`, which it does not take: the message names the ones it does."""
        return cls(f"{path} does not take {method}: use {' or '.join(allowed)}", allowed=allowed)


class Conflict(GatewayError):
    code = "conflict"


class KeyReused(Conflict):
    """An idempotency key (or ref_id) the account used, within its window, for a request with other content."""


class KeyInProgress(Conflict):
    """An idempotency key whose request (this same one: same content) is still under way. `reference_id` is the
    batch that request plans (None when the key names none), so a caller may point at it rather than send again."""

    def __init__(self, message: str, *, reference_id: int | None) -> None:
        super().__init__(message)
        self.reference_id = reference_id


class UpstreamError(GatewayError):
    """An upstream refused or failed a submit. `permanent` says whether a retry can help."""

    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        retry_after: float | None = None,
        unavailable: bool | None = None,
        maybe_taken: bool = False,
        error_code: str | None = None,
        throttled: bool | None = None,
        per_message: bool = False,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after
        # Unavailable (5xx, connection refused or timed out) sends the message to the fallback upstream at once,
        # unless `maybe_taken`; a throttle (429, or anything that says when to come back) waits for the same
        # upstream instead.
        self.unavailable = (not permanent and retry_after is None) if unavailable is None else unavailable
        # No answer came after the request reached the upstream (timed out or cut while being written or answered):
        # the upstream may have taken the message, so offering it again, there or elsewhere, could send it twice.
        self.maybe_taken = maybe_taken
        # The message's error_code when this failure fails it; None: upstream_rejected or upstream_unavailable.
        self.error_code = error_code
        # The upstream is up and took the request, but asks us to slow down (429, Twilio 20429, Jasmin's "User
        # throughput exceeded"): by default any transient answer that is neither unavailable nor maybe taken. Not a
        # failed attempt: the message waits for the same upstream, within its validity (logic/dispatch.py).
        self.throttled = (
            (not permanent and not self.unavailable and not maybe_taken) if throttled is None else throttled
        )
        # The wait it asks (`retry_after`) is for this message alone (9bits' 409 for a reference still being
        # answered), not for every submit to the upstream (a 429's Retry-After, which every record then waits out).
        self.per_message = per_message

    @property
    def kind(self) -> str:
        """As the `UpstreamFailures` metric names it: permanent, throttled or transient."""
        if self.permanent:
            return "permanent"
        return "throttled" if self.throttled else "transient"


class Unavailable(GatewayError):
    """The gateway could not finish the request in time (or could not queue it) and undid what it had done:
    nothing changed, and the same request may be sent again after `retry_after` seconds."""

    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IdTaken(Unavailable):
    """The batch and credits transaction was refused, having written nothing, because the send's new id is another
    batch's (two new ids met: one millisecond, the same random bits), or the undone batch it replaces was linked to
    another already. Not the caller's conflict, whether or not it holds a key (a 409 would say its key was used for
    another request, and it would not send again): a retry gets another id."""


class NotDone(Unavailable):
    """A write DynamoDB neither applied nor refused (it cancelled it for conflicts with other writes on every try,
    or throttled it): nothing of it was written, so there is nothing to undo, and the same request may be made
    again."""


class TransactionUndecided(RuntimeError):
    """DynamoDB neither applied a transaction nor refused it on a condition (it conflicted with other writes on
    every attempt, or was throttled): nothing of it was written. Not a GatewayError: what the request did before it
    stands, and only its caller knows whether the same request again finishes it (a cancel: logic.batches) or the
    request may be done in part (a 500)."""


class InternalError(GatewayError):
    """Something no route expected failed while answering (an AWS error, a bug): the request may have been done in
    part, so the caller retries it under the same idempotency key, or looks before sending it again."""

    code = "internal_error"


class CallbackRejected(GatewayError):
    """An upstream callback failed verification or could not be parsed."""

    code = "callback_rejected"


class OptedOut(GatewayError):
    """Every recipient of a send opted out of its sender (STOP): nothing is sent or charged."""

    code = "opted_out"

"""A circuit breaker per client webhook origin: an origin that keeps failing is not posted to for a while."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

from sms_gateway.domain.webhook_urls import origin_of
from sms_gateway.logic.notify import Post, WebhookFailed, WebhookResponse
from sms_gateway.observability import logger

# Posts in a row that could not connect to the origin (refused, unresolvable, a connect timeout) after which it is not
# posted to ...
FAILURES_TO_OPEN = 5
# ... for this long; then one post is let through: its success closes the origin, its failure opens it again.
OPEN_SECONDS = 30.0
# Origins remembered at most: past it, those not open are forgotten (a success forgets an origin anyway).
MAX_TRACKED_ORIGINS = 10_000


class Outcome(Enum):
    """What a post tells of its origin. Only an origin that cannot be reached is worth not posting to: it costs a
    post 3 to 13 s of the notifier's time. One that answers (even 5xx or 429) answers fast, and its answers are the
    retry schedule's to judge: counted here, a flaky but reachable client's random failures would open its origin
    now and then and spend its notifications' attempts without a post."""

    SUCCESS = "success"  # any answer: the origin is reachable
    FAILURE = "failure"  # no connection: refused, unresolvable, or a timeout connecting
    # An error of ours (an address the SSRF guard refuses, a request not made), or a connection made and no answer in
    # time: a read timeout is that URL's own slowness (its retry schedule's to judge), not its host down. Counted per
    # origin, one account's slow path on a shared webhook host would stop every other account's posts to that host.
    NEITHER = "neither"


class WebhookNotTried(WebhookFailed):
    """A notification not posted because its origin is open: it fails at once and goes on the retry schedule."""


@dataclass
class _Origin:
    failures: int = 0
    open_until: float | None = None
    # A post let through after the cool-down is on its way: every other waits for its outcome.
    probing: bool = False


def outcome_of_failure(failure: WebhookFailed) -> Outcome:
    if failure.host_down:
        return Outcome.FAILURE
    return Outcome.SUCCESS if failure.status_code is not None else Outcome.NEITHER


class WebhookBreaker:
    """Consecutive failures by origin, in memory, for every thread of a container (one lock, held only to read or
    update the counts, never across a post). Nothing is shared between containers: each finds out for itself."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        failures_to_open: int = FAILURES_TO_OPEN,
        open_seconds: float = OPEN_SECONDS,
    ) -> None:
        self.clock = clock
        self.failures_to_open = failures_to_open
        self.open_seconds = open_seconds
        self._lock = threading.Lock()
        self._origins: dict[str, _Origin] = {}

    def admit(self, origin: str) -> bool:
        """Whether a post to `origin` may go (True when it is the one trial post after the cool-down);
        WebhookNotTried when it may not."""
        with self._lock:
            state = self._origins.get(origin)
            if state is None or state.open_until is None:
                return False
            now = self.clock()
            if now < state.open_until:
                until = datetime.fromtimestamp(state.open_until, UTC).isoformat(timespec="seconds")
                raise WebhookNotTried(
                    f"client webhook not tried: {origin} failed {state.failures} times in a row in this container; "
                    f"next try after {until}",
                    # The next attempt no sooner than the origin is tried again: one attempt spent, not several.
                    retry_after=state.open_until - now,
                )
            if state.probing:
                raise WebhookNotTried(
                    f"client webhook not tried: {origin} failed {state.failures} times in a row in this container; "
                    "a trial post is on its way"
                )
            state.probing = True
            return True

    def record(self, origin: str, outcome: Outcome, *, trial: bool = False) -> None:
        """What a post to `origin` came to; `trial`: it was the post admit() let through after the cool-down."""
        with self._lock:
            if outcome is Outcome.SUCCESS:
                self._origins.pop(origin, None)
                return
            state = self._origins.get(origin)
            if outcome is Outcome.NEITHER:
                if state is not None and trial:
                    # Not a post that says anything of the host: closed again, its count kept, so one more failure
                    # opens it.
                    state.open_until, state.probing = None, False
                return
            if state is None:
                self._forget_some()
                state = self._origins[origin] = _Origin()
            state.failures += 1
            if trial or (state.open_until is None and state.failures >= self.failures_to_open):
                state.open_until, state.probing = self.clock() + self.open_seconds, False
                logger.warning(
                    "client webhook origin failing: not posted to for a while",
                    extra={"origin": origin, "failures": state.failures, "open_seconds": self.open_seconds},
                )

    def is_open(self, origin: str) -> bool:
        with self._lock:
            state = self._origins.get(origin)
            return state is not None and state.open_until is not None

    def _forget_some(self) -> None:
        if len(self._origins) >= MAX_TRACKED_ORIGINS:
            for origin in [key for key, state in self._origins.items() if state.open_until is None]:
                del self._origins[origin]

    def guard(self, post: Post) -> Post:
        """`post`, skipped for an open origin (WebhookNotTried), and its outcome counted."""

        async def guarded(url: str, headers: dict[str, str], body: bytes) -> WebhookResponse:
            origin = origin_of(url)
            if origin is None:
                return await post(url, headers, body)
            trial = self.admit(origin)
            outcome = Outcome.NEITHER
            try:
                response = await post(url, headers, body)
                outcome = Outcome.SUCCESS
                return response
            except WebhookFailed as failure:
                outcome = outcome_of_failure(failure)
                raise
            finally:
                self.record(origin, outcome, trial=trial)

        return guarded

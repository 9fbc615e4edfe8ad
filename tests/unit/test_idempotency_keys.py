"""When a request under an idempotency key fails, whether its key is let go (the retry is a new request) or kept
(the retry, after the lease, resumes what the failed request may have left part-done)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sms_gateway.domain.models import KeyClaim, StoredAnswer
from sms_gateway.errors import IdTaken, InsufficientCredits, NotDone, Unavailable
from sms_gateway.logic.idempotency import NEW_ID_TRIES, SEND_LEASE, run_once

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class RecordingKeys:
    """An IdempotencyStore whose every key is free: records what becomes of it."""

    def __init__(self) -> None:
        self.abandoned: list[str] = []
        self.completed: list[str] = []
        self.lapsed: list[str] = []

    def begin(self, scope: str, key: str, fingerprint: str, *, now: datetime, reference_id: int, **_: Any) -> Any:
        return KeyClaim(reference_id=reference_id)

    def complete(self, scope: str, key: str, answer: StoredAnswer) -> None:
        self.completed.append(key)

    def abandon(self, scope: str, key: str) -> None:
        self.abandoned.append(key)

    def lapse(self, scope: str, key: str) -> None:
        self.lapsed.append(key)


def failing(error: Exception) -> Any:
    def produce(claim: KeyClaim | None) -> StoredAnswer:
        raise error

    return produce


@pytest.mark.parametrize(
    ("error", "lease", "let_go"),
    [
        # A refusal, or a send that undid itself: nothing of it stands, the retry is a new send.
        (InsufficientCredits("not enough credits"), SEND_LEASE, True),
        (Unavailable("undone"), SEND_LEASE, True),
        # Anything else may have left the send stored, charged or queued: the retry after the lease resumes it.
        (TimeoutError("Read timeout on endpoint URL"), SEND_LEASE, False),
        # Without a lease nothing could resume it, so the key is let go (it would be held for its whole window).
        (TimeoutError("Read timeout on endpoint URL"), None, True),
    ],
)
def test_a_failed_request_lets_its_key_go_only_when_nothing_of_it_can_stand(
    error: Exception, lease: timedelta | None, let_go: bool
) -> None:
    keys = RecordingKeys()
    with pytest.raises(type(error)):
        run_once(keys, scope="acc", key="k", request_fingerprint="f", now=NOW, produce=failing(error), lease=lease)
    assert keys.abandoned == (["k"] if let_go else [])
    assert keys.completed == []


class ResumedKeys(RecordingKeys):
    """Every key was held by a request that died: the claim is resumed."""

    def begin(self, scope: str, key: str, fingerprint: str, *, now: datetime, reference_id: int, **_: Any) -> Any:
        return KeyClaim(reference_id=reference_id, resumed=True)


def run_resumed(keys: ResumedKeys, error: Exception, undo: Any) -> StoredAnswer:
    """A send under a key whose earlier request died, failing with `error`."""
    return run_once(
        keys,
        scope="acc",
        key="k",
        request_fingerprint="f",
        now=NOW,
        produce=failing(error),
        lease=SEND_LEASE,
        undo=undo,
    )


STANDING = StoredAnswer(status_code=200, content_type="application/json", body='{"reference_id": "7"}')


def undo_that(result: StoredAnswer | Exception | None) -> Any:
    def undo(claim: KeyClaim) -> StoredAnswer | None:
        if isinstance(result, Exception):
            raise result
        return result

    return undo


@pytest.mark.parametrize(
    ("error", "undone", "raised", "let_go"),
    [
        # A refused retry whose undo left nothing of the died request's send standing: the key goes, refused.
        (InsufficientCredits("not enough credits"), None, InsufficientCredits, True),
        # The undo failed: kept, for a retry after the lease, and answered with the undo's failure (a 500: the send
        # may stand), never with the refusal (a 4xx says nothing was sent).
        (InsufficientCredits("not enough credits"), TimeoutError("Read timeout"), TimeoutError, False),
        # Not a refusal: nothing is undone, the key is kept.
        (TimeoutError("Read timeout on endpoint URL"), None, TimeoutError, False),
    ],
)
def test_a_refused_resumed_request_lets_its_key_go_only_once_what_it_resumed_is_undone(
    error: Exception, undone: StoredAnswer | Exception | None, raised: type[Exception], let_go: bool
) -> None:
    keys = ResumedKeys()
    with pytest.raises(raised):
        run_resumed(keys, error, undo_that(undone))
    assert keys.abandoned == (["k"] if let_go else [])
    assert keys.completed == []


def test_a_resumed_request_stopped_by_a_write_left_undecided_undoes_nothing_and_its_retry_resumes_at_once() -> None:
    # Given a retry under a key whose died request's send stands, stopped by a write DynamoDB neither applied nor
    # refused (NotDone: it wrote nothing)
    keys = ResumedKeys()
    undone: list[KeyClaim] = []

    def undo(claim: KeyClaim) -> StoredAnswer | None:
        undone.append(claim)
        return None

    # When it runs, it answers NotDone (a 503 to retry)
    with pytest.raises(NotDone):
        run_resumed(keys, NotDone("storing 5 messages of batch 7: not done, nothing changed; try again"), undo)
    # Then nothing is undone, the key is kept, and its lease ended: the next retry resumes the send at once
    assert undone == []
    assert (keys.abandoned, keys.completed, keys.lapsed) == ([], [], ["k"])


def test_a_refused_resumed_request_whose_send_stands_answers_with_it_and_keeps_it_under_its_key() -> None:
    # Given a retry under a key whose died request's send stands (a dispatcher took it), refused for want of credits
    keys = ResumedKeys()
    # When it runs
    answer = run_resumed(keys, InsufficientCredits("not enough credits"), undo_that(STANDING))
    # Then it answers with the send that stands, not its refusal, and keeps that answer under the key
    assert answer == STANDING
    assert (keys.completed, keys.abandoned) == (["k"], [])


def test_a_refused_resumed_request_without_an_undo_made_nothing_that_could_stand_and_lets_its_key_go() -> None:
    keys = ResumedKeys()
    with pytest.raises(InsufficientCredits):
        run_resumed(keys, InsufficientCredits("not enough credits"), None)
    assert keys.abandoned == ["k"]


class KeysThatCannotComplete(RecordingKeys):
    def complete(self, scope: str, key: str, answer: StoredAnswer) -> None:
        raise TimeoutError("Read timeout on endpoint URL")


@pytest.mark.parametrize("lease", [SEND_LEASE, None])
def test_a_request_that_succeeded_gets_its_answer_even_when_keeping_it_under_the_key_fails(
    lease: timedelta | None,
) -> None:
    """The request stands (the send is queued, the group stored): a 500 would tell the client it failed, and its
    retry under the key would find the key still held. The key is kept, not let go, since letting it go would let a
    retry do it all again."""
    keys = KeysThatCannotComplete()
    done = StoredAnswer(status_code=201, content_type="application/json", body='{"ok": true}')
    answer = run_once(
        keys, scope="acc", key="k", request_fingerprint="f", now=NOW, produce=lambda claim: done, lease=lease
    )
    assert answer == done
    assert keys.abandoned == []


class RenumberingKeys(RecordingKeys):
    """Every key is free, and a claim on it is moved to another id when asked (IdempotencyStore.renumber)."""

    def __init__(self) -> None:
        super().__init__()
        self.renumbered: list[int] = []

    def renumber(self, scope: str, key: str, claim: KeyClaim, reference_id: int) -> KeyClaim | None:
        self.renumbered.append(claim.reference_id)
        return KeyClaim(reference_id=reference_id, mark=claim.mark)


def test_a_first_claim_whose_id_is_taken_is_moved_to_another_and_sent_under_it_until_the_tries_run_out() -> None:
    keys = RenumberingKeys()
    taken_once = iter([True])

    def produce(claim: KeyClaim | None) -> StoredAnswer:
        assert claim is not None
        if next(taken_once, False):
            raise IdTaken("batch exists already")
        return StoredAnswer(status_code=200, content_type="application/json", body=str(claim.reference_id))

    # Given a first claim whose id another batch has: the key is moved once, and the send answered under the new id
    answer = run_once(keys, scope="acc", key="k", request_fingerprint="f", now=NOW, produce=produce, lease=SEND_LEASE)
    assert (answer.status_code, keys.completed, len(keys.renumbered)) == (200, ["k"], 1)
    assert int(answer.body) != keys.renumbered[0]
    # And ids that keep meeting give up after NEW_ID_TRIES, letting the key go
    keys = RenumberingKeys()
    with pytest.raises(IdTaken):
        run_once(keys, scope="acc", key="k", request_fingerprint="f", now=NOW, produce=failing(IdTaken("taken")))
    assert (len(keys.renumbered), keys.abandoned) == (NEW_ID_TRIES - 1, ["k"])

"""`sms-gateway send | status | tail`: client-developer commands over the gateway's HTTP API (9bits dialect)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any, TextIO

import httpx

from sms_gateway.adapters.http import retry_after_seconds
from sms_gateway.domain.status import TERMINAL
from sms_gateway_tools.admin import (
    TargetNotFound,
    _print_record,
    _print_rows,
    _print_rows_read_twice,
    describe_stack,
    stack_outputs,
)
from sms_gateway_tools.arguments import number, whole_number
from sms_gateway_tools.bulk_send import (
    KEY_USED_REASON,
    BulkSendError,
    KeyUsed,
    ProgressFile,
    RowRejected,
    RowResult,
    Summary,
    print_json,
    progress_path,
    progress_target,
    read_rows,
    send_rows,
)
from sms_gateway_tools.scratch import Scratch, ScratchFailed

API_URL_VARIABLE = "SMS_GATEWAY_API_URL"
TOKEN_VARIABLE = "SMS_GATEWAY_TOKEN"  # noqa: S105 - the variable's name, not a secret
# No status follows these: `tail` stops once every message is in one.
FINAL_STATUSES = frozenset(str(status) for status in TERMINAL)
REPORT_PAGE_SIZE = 1000

# A row's send is tried again after these pauses (seconds) when the gateway is unreachable, throttles or fails;
# longer when its Retry-After asks so, up to this wait: past it the row is given up on (sent by a later run).
RETRY_PAUSES = (0.5, 1.0, 2.0)
MAX_RETRY_WAIT_SECONDS = 60.0
TRANSIENT_STATUSES = frozenset({0, 429, 500, 502, 503, 504})

# Exit codes: the gateway refused something (a row, a send, an unknown batch) / the command could not run at all.
REFUSED = 1
CANNOT_RUN = 2
INTERRUPTED = 130


# The status of an ApiError when the gateway gave no answer at all (unreachable).
NO_ANSWER = 0
# What a send's answer of these statuses means: no such path (404), or one that takes no POST (405), at that URL.
WRONG_PATH_STATUSES = frozenset({404, 405})
WRONG_URL_HINT = (
    f"is the API URL the gateway's (--api-url, ${API_URL_VARIABLE}: a deployed stack's ApiUrl output, as "
    "`--stack-name` reads it)?"
)

API_URL_FORM = "write it as https://HOST or https://HOST/STAGE (a deployed stack's ApiUrl output)"


class ApiError(Exception):
    """The gateway answered with an error: its HTTP status and its own message."""

    def __init__(
        self, status_code: int, message: str, retry_after: float | None = None, *, not_the_gateway: bool = False
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.retry_after = retry_after  # the seconds its Retry-After asks to wait before trying again, if any
        # No gateway at the URL: the answer was not its JSON (a web page, a proxy's error page), or a route every
        # gateway has is not there (`GatewayClient._call`): the URL is most likely wrong.
        self.not_the_gateway = not_the_gateway

    def __str__(self) -> str:
        said = self.status_code == NO_ANSWER or self.not_the_gateway  # no status, or one the message tells
        return self.message if said else f"{self.message} (HTTP {self.status_code})"


def resolve_api_url(api_url: str | None, stack_name: str | None) -> str:
    """--api-url, else a deployed stack's ApiUrl output, else $SMS_GATEWAY_API_URL, else the running local stack."""
    if api_url:
        return checked_api_url(api_url, "--api-url")
    if stack_name:
        outputs = stack_outputs(describe_stack(stack_name))
        if not outputs.get("ApiUrl"):
            raise TargetNotFound(f"stack {stack_name!r} has no ApiUrl output: is it an sms-gateway stack?")
        return checked_api_url(outputs["ApiUrl"], f"stack {stack_name!r}'s ApiUrl output")
    if os.environ.get(API_URL_VARIABLE):
        return checked_api_url(os.environ[API_URL_VARIABLE], f"${API_URL_VARIABLE}")
    from sms_gateway_tools.localstack.stack import read_stack_file

    state = read_stack_file()
    if state and state.get("api_url"):
        return checked_api_url(str(state["api_url"]), "the local stack's api_url")
    raise TargetNotFound(
        f"which gateway? pass --api-url, set {API_URL_VARIABLE}, pass --stack-name, or start a local stack (make dev)"
    )


def checked_api_url(written: str, source: str) -> str:
    """The API URL as written, without the spaces or line end around it (a variable set from a file with Windows line
    ends) nor its trailing slash; one that is not an http(s) URL with a host is refused (TargetNotFound), naming it
    and `source` (until 2026-12-07 a mistyped port or an unclosed bracket ended in a traceback)."""
    url = written.strip().rstrip("/")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise TargetNotFound(f"{source} {written!r} is not a URL ({error}): {API_URL_FORM}") from error
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise TargetNotFound(f"{source} {written!r} is not an http(s) URL: {API_URL_FORM}")
    return url


def resolve_token(token: str | None) -> str:
    """--token, else $SMS_GATEWAY_TOKEN, without the spaces or line end around it (a variable set from a file with
    Windows line ends, a paste); one with a character no token has (an HTTP header cannot carry it: a space inside,
    a curly quote a document made of a straight one) is refused (TargetNotFound) without printing the token. Until
    2026-12-07 a line end failed every request as "cannot reach the gateway", printing the whole token, and a
    non-ASCII character ended in a traceback."""
    source = "--token" if token else f"${TOKEN_VARIABLE}"
    found = (token or os.environ.get(TOKEN_VARIABLE) or "").strip()
    if not found:
        raise TargetNotFound(f"no token: pass --token or set {TOKEN_VARIABLE} (the account's Bearer token)")
    for position, character in enumerate(found, start=1):
        if not ("!" <= character <= "~"):
            raise TargetNotFound(
                f"the token ({source}) has a character no token has, {character!r} at its character {position}: "
                "copy it again as it was issued (`admin create-account` or `admin issue-credential --kind token`)"
            )
    return found


class GatewayClient:
    """The few 9bits routes the commands use; thread-safe (one httpx.Client shared by the bulk sender's threads)."""

    def __init__(self, api_url: str, token: str, *, timeout: float = 30.0, transport: Any = None) -> None:
        self.target = progress_target(api_url, token)  # whose progress entries are this client's
        self.http = httpx.Client(
            base_url=api_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(
        self, method: str, path: str, *, every_gateway_has: bool = False, answered: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """The answer's JSON, or ApiError. A route `every_gateway_has` (a send's, a dry run's) answered 404 or 405 is
        no gateway at the URL (not_the_gateway): the URL has a path too many (`.../ng/v1`) or is another API's. So is
        a success without the field the gateway's always has (`answered`): another JSON API answered (until session
        37 a send's ended in a KeyError traceback, and `send --csv` rejected each row as an "unexpected error")."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ApiError(NO_ANSWER, f"cannot reach the gateway at {self.http.base_url}: {error}") from error
        if response.is_redirect:
            raise ApiError(response.status_code, _redirected(method, path, response), not_the_gateway=True)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            content_type = response.headers.get("content-type") or "no Content-Type"
            raise _not_the_gateways(
                method,
                response,
                f"with something that is not the gateway's JSON ({content_type}: {response.text[:80]!r})",
            )
        if response.status_code >= 400:
            message = str(body.get("message") or response.reason_phrase)
            if every_gateway_has and response.status_code in WRONG_PATH_STATUSES:
                raise _not_the_gateways(method, response, f"({message!r}): no such path there")
            raise ApiError(response.status_code, message, retry_after_seconds(response.headers.get("retry-after")))
        if answered is not None and body.get(answered) in (None, ""):
            raise _not_the_gateways(method, response, f"without the {answered} the gateway's answer has ({body!r:.80})")
        return body

    def send(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        # Fixed separators and key order: a retry under the same key must be the very same body to the gateway.
        content = json.dumps(body, separators=(",", ":"))
        headers["Content-Type"] = "application/json"
        return self._call(
            "POST", "/ng/v1/sendsms", every_gateway_has=True, answered="reference_id", content=content, headers=headers
        )

    def dry_run(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(
            "POST", "/ng/v1/batches/dry_run", every_gateway_has=True, answered="would_be_accepted", json=body
        )

    def batch(self, reference_id: str) -> dict[str, Any]:
        return self._call("GET", f"/ng/v1/batches/{reference_id}")

    def delivery_reports(self, reference_id: str) -> Iterator[dict[str, Any]]:
        """Every message of the batch, following the cursor to the last page."""
        cursor: str | None = None
        while True:
            params = {"page_size": str(REPORT_PAGE_SIZE), **({"next": cursor} if cursor else {})}
            page = self._call("GET", f"/ng/v1/batches/{reference_id}/delivery_report", params=params)
            yield from page.get("data") or []
            cursor = page.get("next")
            if not cursor:
                return


def _not_the_gateways(method: str, response: httpx.Response, how: str) -> ApiError:
    """An answer that is not the gateway's (`how` it is not): the API URL is most likely wrong."""
    return ApiError(
        response.status_code,
        f"{method} {response.url} answered HTTP {response.status_code} {how}: {WRONG_URL_HINT}",
        not_the_gateway=True,
    )


def _redirected(method: str, path: str, response: httpx.Response) -> str:
    """What a redirect of a request to `path` says: the API URL it points to (http:// redirected to https://, a moved
    host). It is not followed: a client redirected would send its POST as a GET, or its token to another host.
    Until 2026-12-07 it was said as "something that is not the gateway's JSON"."""
    target = response.url.join(response.headers["location"])
    where = f"{method} {response.url} answered HTTP {response.status_code}, a redirect to {target}"
    if not target.path.endswith(path):
        return f"{where}: {WRONG_URL_HINT}"
    api_url = str(target.copy_with(path=target.path.removesuffix(path) or "/", query=None)).rstrip("/")
    return f"{where}: pass --api-url {api_url} (or set ${API_URL_VARIABLE} to it), which it redirects to"


def send_body(sender: str, to: str | list[str], text: str, delivery_report: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"from": sender, "to": to, "message": text}
    if delivery_report:
        body["delivery_report"] = "yes"
    return body


def _open_client(args: argparse.Namespace) -> GatewayClient:
    return GatewayClient(resolve_api_url(args.api_url, args.stack_name), resolve_token(args.token))


def _fail(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    if isinstance(error, ApiError) and error.status_code == 401:
        print(f"(check the token: --token or {TOKEN_VARIABLE})", file=sys.stderr)
    refused = isinstance(error, ApiError) and error.status_code >= 400 and not error.not_the_gateway
    return REFUSED if refused else CANNOT_RUN


# ---------------------------------------------------------------- send


def _cmd_send(args: argparse.Namespace) -> int:
    if args.csv:
        try:
            return _send_csv(args)
        except KeyboardInterrupt:
            # Ctrl-C while the CSV or its progress file is read before any row goes, or while the summary is printed
            # (during the send, `send_rows` lets the rows in flight finish and ends in the summary).
            print(
                f"interrupted: the rows accepted are recorded in {progress_path(Path(args.csv))}; run the same "
                "command again to send the others",
                file=sys.stderr,
            )
            return INTERRUPTED
    if not args.to or args.message is None:
        print("error: pass --to NUMBER and --message TEXT (or --csv FILE for a bulk send)", file=sys.stderr)
        return CANNOT_RUN
    body = send_body(args.sender, args.to[0] if len(args.to) == 1 else args.to, args.message, args.dlr)
    if args.dry_run:
        return _dry_run_one(args, body)
    try:
        with _open_client(args) as client:
            answer = client.send(body, args.idempotency_key)
            batch = _batch_or_nothing(client, str(answer["reference_id"]))
    except (ApiError, TargetNotFound) as error:
        return _fail(error)
    result = {
        "reference_id": answer["reference_id"],
        "recipients_processed": answer.get("recipients_processed"),
        "parts": batch.get("parts"),
        "encoding": batch.get("encoding"),
        "cost": batch.get("cost"),
        "status": batch.get("status"),
    }
    if answer.get("refused"):
        result["refused"] = answer["refused"]
    if args.json:
        print(json.dumps(result))
    else:
        refused = [f"{r['to']}: {r['reason']}" for r in answer.get("refused", [])]
        _print_record({**result, "refused": refused} if refused else result)
    # Sent to the others, but not to every number asked: a script must not read it as all sent.
    return REFUSED if answer.get("refused") else 0


def _batch_or_nothing(client: GatewayClient, reference_id: str) -> dict[str, Any]:
    """The batch just accepted; a failed read only leaves its cost unknown (accepted is accepted)."""
    try:
        return client.batch(reference_id)
    except ApiError as error:
        print(f"warning: sent, but the batch could not be read back: {error}", file=sys.stderr)
        return {}


def _row_error(error: ApiError) -> Exception:
    """A refusal of the caller, or no gateway at the URL (none answers; the send's path is unknown there; the answer is
    not its JSON: `GatewayClient._call`), stops a CSV run: every other row would meet it too (until session 36 a wrong
    URL rejected each row in turn). The row's key held for another request is told apart from a refusal of the row
    (KeyUsed): it was most likely sent."""
    if error.status_code in (NO_ANSWER, 401, 403) or error.not_the_gateway:
        return BulkSendError(str(error))
    if error.status_code == 409 and "used for a different request" in error.message.lower():
        return KeyUsed(error.message)
    return RowRejected(error.message)


def _dry_run_one(args: argparse.Namespace, body: dict[str, Any]) -> int:
    try:
        with _open_client(args) as client:
            answer = client.dry_run(body)
    except (ApiError, TargetNotFound) as error:
        return _fail(error)
    if args.json:
        print(json.dumps(answer))
    else:
        fields = ["parts", "encoding", "ucs2_characters", "characters_per_part", "recipients", "total_cost", "balance"]
        invalid = [f"{entry['to']}: {entry['reason']}" for entry in answer.get("invalid") or []]
        _print_record(
            {name: answer.get(name) for name in fields}
            | {"invalid": invalid, "would_be_accepted": answer.get("would_be_accepted")}
        )
        print("dry run: nothing was sent or charged", file=sys.stderr)
    return 0 if answer.get("would_be_accepted") else REFUSED


def _dry_run_reasons(answer: dict[str, Any]) -> str:
    reasons = [f"{entry['to']!r}: {entry['reason']}" for entry in answer.get("invalid") or []]
    if not answer.get("balance_sufficient", True):
        reasons.append(f"not enough credits: costs {answer.get('total_cost')}, balance {answer.get('balance')}")
    return "; ".join(reasons) or "the gateway would not accept it"


def _csv_dry_runner(client: GatewayClient, sender: str, balance: dict[str, int]) -> Any:
    def quote_one(to: str, text: str, key: str) -> tuple[str | None, int | None]:
        try:
            answer = client.dry_run(send_body(sender, to, text, delivery_report=False))
        except ApiError as error:
            raise _row_error(error) from error
        balance["credits"] = int(answer.get("balance") or 0)
        if not answer.get("would_be_accepted"):
            raise RowRejected(_dry_run_reasons(answer))
        return None, answer.get("total_cost")

    return quote_one


def send_with_retries(
    client: GatewayClient, body: dict[str, Any], key: str, pauses: tuple[float, ...]
) -> dict[str, Any]:
    """Sends under the key, again after each pause (or the longer wait the answer's Retry-After asks) while the
    failure is transient: safe, as the key makes a request the gateway did receive answer its first answer instead
    of sending twice."""
    for pause in (*pauses, None):
        try:
            return client.send(body, key)
        except ApiError as error:
            # 409 here is the key's first request still in progress; a key reused for another body stays 409.
            in_progress = error.status_code == 409 and "still being processed" in error.message
            if pause is None or not (error.status_code in TRANSIENT_STATUSES or in_progress):
                raise
            wait = max(pause, error.retry_after or 0.0)
            if wait > MAX_RETRY_WAIT_SECONDS:
                raise
            time.sleep(wait)
    raise AssertionError("unreachable")


def _csv_sender(client: GatewayClient, sender: str, delivery_report: bool) -> Any:
    def send_one(to: str, text: str, key: str) -> tuple[str | None, int | None]:
        try:
            answer = send_with_retries(client, send_body(sender, to, text, delivery_report), key, RETRY_PAUSES)
        except ApiError as error:
            raise _row_error(error) from error
        reference_id = str(answer["reference_id"])
        try:
            cost = client.batch(reference_id).get("cost")
        except ApiError:
            # Accepted is accepted: a failed read only leaves the cost unknown (`status` shows it later).
            cost = None
        return reference_id, cost

    return send_one


class TextProgress:
    """A one-line progress bar redrawn in place on a terminal; silent when the stream is not a terminal."""

    WIDTH = 30

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total, self.stream, self.done = total, stream, 0
        self.counts = {"accepted": 0, "already_accepted": 0, "duplicate": 0, "rejected": 0, "key_used": 0}
        self.enabled = enabled and total > 0 and stream.isatty()
        self._lock = threading.Lock()

    def update(self, result: RowResult) -> None:
        with self._lock:
            self.done += 1
            self.counts[result.outcome] = self.counts.get(result.outcome, 0) + 1
            if not self.enabled:
                return
            filled = self.WIDTH * self.done // self.total
            bar = "#" * filled + "." * (self.WIDTH - filled)
            accepted = self.counts["accepted"] + self.counts["already_accepted"]
            line = f"\r[{bar}] {self.done}/{self.total}  accepted {accepted}  rejected {self.counts['rejected']}"
            self.stream.write(line)
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _send_csv(args: argparse.Namespace) -> int:
    if args.to:
        print("error: --to and --csv do not go together: the numbers come from the CSV", file=sys.stderr)
        return CANNOT_RUN
    if args.idempotency_key:
        print("error: --idempotency-key is for one message: with --csv each row gets its own key", file=sys.stderr)
        return CANNOT_RUN
    if args.message is None:
        print("error: --csv needs --message TEMPLATE (e.g. 'Hi {name}')", file=sys.stderr)
        return CANNOT_RUN
    path = Path(args.csv)
    try:
        # The whole file is read through first, a row at a time: one that cannot be read or is not valid CSV sends
        # nothing. The send reads it again as it goes, so a big file is never held in memory.
        with _open_csv(path) as stream:
            total = sum(1 for _ in read_rows(stream, args.message))
    except OSError as error:
        print(f"error: cannot read {path}: {error.strerror}", file=sys.stderr)
        return CANNOT_RUN
    except (BulkSendError, UnicodeDecodeError) as error:
        print(f"error: {path}: {error}", file=sys.stderr)
        return CANNOT_RUN
    if total == 0:
        # The wrong sheet exported, or rows not saved: a run that "sent" nothing must not read as done (exit 0).
        print(
            f"error: {path} has no rows to send (only its header line, or rows left empty): nothing sent; is it the "
            "right file or sheet?",
            file=sys.stderr,
        )
        return CANNOT_RUN
    bar = TextProgress(total, sys.stderr, enabled=not args.json)
    balance: dict[str, int] = {}
    try:
        with _open_client(args) as client, _open_csv(path) as stream:
            progress = ProgressFile(progress_path(path), client.target)
            _note_untargeted(progress)
            summary = send_rows(
                read_rows(stream, args.message),
                sender=args.sender,
                template=args.message,
                send_one=_csv_dry_runner(client, args.sender, balance)
                if args.dry_run
                else _csv_sender(client, args.sender, args.dlr),
                progress=progress,
                concurrency=args.concurrency,
                on_result=bar.update,
                dry_run=args.dry_run,
            )
    except (BulkSendError, ScratchFailed, TargetNotFound, OSError, UnicodeDecodeError) as error:
        bar.finish()
        print(f"error: {error}", file=sys.stderr)
        return CANNOT_RUN
    bar.finish()
    # The rows a stopped or interrupted run did not reach: no result each, a rerun sends them.
    not_sent = total - summary.rows
    run: dict[str, Any] = {"not_sent": not_sent, "progress_file": str(progress.path)}
    # Each row alone may be within the balance while all of them are not: the send would be refused past it.
    balance_sufficient = balance.get("credits") is None or summary.new_cost <= balance["credits"]
    if args.dry_run:
        run["balance"] = balance.get("credits")
        run["balance_sufficient"] = balance_sufficient
    if args.json:
        print_json(summary.to_dict(run), sys.stdout)
    else:
        _print_summary(summary, progress.path, balance.get("credits"), not_sent)
    if summary.fatal is not None:
        print(f"error: {summary.fatal}", file=sys.stderr)
        print(f"{not_sent} rows not sent: once that is fixed, run the same command again to send them", file=sys.stderr)
        return CANNOT_RUN
    if summary.interrupted:
        print(f"interrupted: {not_sent} rows not sent; run the same command again to send them", file=sys.stderr)
        return INTERRUPTED
    if args.dry_run and not balance_sufficient:
        return REFUSED
    # A row whose key was used otherwise was most likely sent, but no answer says so: not all sent, as far as is known.
    return REFUSED if summary.count("rejected") or summary.count("key_used") else 0


def _open_csv(path: Path) -> TextIO:
    """The CSV as text: UTF-8 with or without the byte order mark Excel writes, its line ends left to the csv module
    (a quoted cell may hold a CRLF). A byte that is not UTF-8 is kept escaped, for `read_rows` to refuse naming its
    line rather than the decoder's byte offset in a buffer."""
    return path.open(newline="", encoding="utf-8-sig", errors="surrogateescape")


def _note_untargeted(progress: ProgressFile) -> None:
    if progress.untargeted:
        print(
            f"note: {len(progress.untargeted)} rows in {progress.path} were recorded by an older version without "
            "the gateway they went to; they are not counted as accepted: they are sent again under their keys "
            "(the gateway that accepted them in the last 24 hours answers its first answer and sends nothing)",
            file=sys.stderr,
        )


def _print_summary(summary: Summary, progress: Path, balance: int | None = None, not_sent: int = 0) -> None:
    cost = summary.cost if summary.cost_known else f"{summary.cost} (some costs unknown: see `status`)"
    _print_rows(
        [
            {"outcome": "would be accepted" if summary.dry_run else "accepted", "rows": summary.count("accepted")},
            {"outcome": "already accepted (earlier run)", "rows": summary.count("already_accepted")},
            {"outcome": "duplicate of an earlier row", "rows": summary.count("duplicate")},
            {"outcome": "rejected", "rows": summary.count("rejected")},
            *(
                [{"outcome": "key used with the number written another way", "rows": summary.count("key_used")}]
                if summary.count("key_used")
                else []
            ),
            *([{"outcome": "not sent (the run stopped)", "rows": not_sent}] if not_sent else []),
            {"outcome": "total", "rows": summary.rows + not_sent},
        ],
        ["outcome", "rows"],
    )
    if summary.dry_run:
        print(f"sending the rows not yet accepted would cost {summary.new_cost} credits (balance {balance})")
        if balance is not None and summary.new_cost > balance:
            print("the balance does not cover them all: the rows past it would be refused (HTTP 402)")
    else:
        print(f"cost: {cost} credits")
    if summary.results_lost:
        print("the rows' results could not all be kept (see the error): the rejected rows are not listed")
    elif summary.count("rejected"):
        print("rejected rows (fix them and run the same command again: accepted rows are not sent twice):")
        _print_rows_read_twice(lambda: (r.__dict__ for r in summary.of("rejected")), ["line", "to", "reason"])
    if summary.count("key_used") and not summary.results_lost:
        print(f"rows not sent again: {KEY_USED_REASON}")
        _print_rows_read_twice(lambda: (r.__dict__ for r in summary.of("key_used")), ["line", "to"])
    if summary.dry_run:
        print("dry run: nothing was sent or charged", file=sys.stderr)
    elif summary.unrecorded:
        lines = ", ".join(str(line) for line in sorted(summary.unrecorded))
        print(
            f"accepted rows NOT recorded in {progress} (lines {lines}): run the same command again within 24 hours "
            "(their keys get the gateway's first answer, nothing is sent twice); after that they would be sent again"
        )
    else:
        print(f"accepted rows are recorded in {progress}")


# ---------------------------------------------------------------- status and tail


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        with _open_client(args) as client:
            batch = client.batch(args.reference_id)
            messages = list(client.delivery_reports(args.reference_id))
    except (ApiError, TargetNotFound) as error:
        return _fail(error)
    if args.json:
        print(json.dumps({"batch": batch, "messages": messages}))
        return 0
    counts = ", ".join(f"{status} {n}" for status, n in sorted((batch.get("counts") or {}).items()))
    # Not the answer's envelope, nor `to`: each number is a row of the table below.
    shown = {key: value for key, value in batch.items() if key not in ("status_code", "message", "to")}
    _print_record({**shown, "counts": counts or None})
    print()
    _print_rows(messages, ["message_id", "to", "telco", "status", "error_code", "parts", "updated_at"])
    return 0


def _reference_ids(args: argparse.Namespace, target: str) -> Iterator[str]:
    """The named batches, and those the CSV's progress file records for this gateway and account (and, from
    files written before targets were recorded, those of unknown target: following them only reads), an entry at a
    time."""
    yield from args.reference_ids
    if args.csv:
        progress = ProgressFile(progress_path(Path(args.csv)), target)
        for entry in chain(progress.accepted.values(), progress.untargeted.values()):
            if entry.get("reference_id"):
                yield str(entry["reference_id"])


# The batches `tail` follows and the status it last printed of each of their messages (`FollowedBatches`).
FOLLOWED_SCHEMA = """
CREATE TABLE batches (reference_id TEXT NOT NULL UNIQUE);
CREATE TABLE statuses (message_id TEXT PRIMARY KEY, status TEXT NOT NULL) WITHOUT ROWID;
"""


class FollowedBatches:
    """The batches `tail` follows, each once in the order first named, and the status last printed of each of their
    messages: kept on disk (`Scratch`), as a campaign's progress file names a batch a row (until 2026-12-07 they were
    held in memory, about 900 bytes a batch)."""

    def __init__(self, reference_ids: Iterable[str]) -> None:
        self._scratch = Scratch(FOLLOWED_SCHEMA)
        for reference_id in reference_ids:
            self._scratch.write("INSERT OR IGNORE INTO batches VALUES (?)", (reference_id,))

    def __bool__(self) -> bool:
        return bool(self._scratch.rows("SELECT 1 FROM batches LIMIT 1"))

    def __iter__(self) -> Iterator[str]:
        query = "SELECT rowid, reference_id FROM batches WHERE rowid > ? ORDER BY rowid LIMIT ?"
        for _, reference_id in self._scratch.paged(query, (), start=(0,), after=lambda row: (row[0],)):
            yield str(reference_id)

    def changed(self, message_id: str, status: str) -> bool:
        """Whether `status` is not the message's status last noted (it is noted now)."""
        return bool(
            self._scratch.write(
                "INSERT INTO statuses VALUES (?, ?) ON CONFLICT (message_id) DO UPDATE SET status = excluded.status "
                "WHERE status != excluded.status",
                (message_id, status),
            )
        )


def _cmd_tail(args: argparse.Namespace) -> int:
    no_batches = "error: name the batches to follow: tail REFERENCE_ID... or tail --csv FILE"
    if not args.reference_ids and not args.csv:
        print(no_batches, file=sys.stderr)
        return CANNOT_RUN
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    try:
        with _open_client(args) as client:
            batches = FollowedBatches(_reference_ids(args, client.target))
            if not batches:
                print(f"{no_batches} (the CSV's progress file records none sent to this gateway)", file=sys.stderr)
                return CANNOT_RUN
            while True:
                pending = 0
                for reference_id in batches:
                    messages = 0
                    for message in client.delivery_reports(reference_id):
                        messages += 1
                        status = str(message.get("status"))
                        pending += status not in FINAL_STATUSES
                        if batches.changed(str(message["message_id"]), status):
                            _print_change(message, args.json)
                    pending += 0 if messages else 1  # a batch with no messages yet is not finished
                if pending == 0:
                    return 0
                if deadline is not None and time.monotonic() >= deadline:
                    print(f"timed out: {pending} messages not in a final state yet", file=sys.stderr)
                    return REFUSED
                time.sleep(args.interval)
    except (ApiError, TargetNotFound, BulkSendError, ScratchFailed) as error:
        return _fail(error)


def _print_change(message: dict[str, Any], as_json: bool) -> None:
    fields = ["reference_id", "message_id", "to", "status", "error_code", "updated_at"]
    if as_json:
        print(json.dumps({name: message.get(name) for name in fields}), flush=True)
        return
    failed = message.get("error_code") and message.get("status") != "delivered"
    error = f"  error {message['error_code']}" if failed else ""
    line = f"{message.get('updated_at') or '-'}  {message.get('reference_id')}  {message.get('message_id')}"
    print(f"{line}  {message.get('to')}  {message.get('status')}{error}", flush=True)


# ---------------------------------------------------------------- the command line


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    target = common.add_argument_group("gateway")
    target.add_argument("--api-url", metavar="URL", help=f"the gateway's API URL (default: ${API_URL_VARIABLE})")
    target.add_argument("--stack-name", help="a deployed CloudFormation stack: its ApiUrl output is used")
    target.add_argument("--token", help=f"the account's Bearer token (default: ${TOKEN_VARIABLE})")
    common.add_argument("--json", action="store_true", help="print JSON (for scripts)")

    def command(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return subparsers.add_parser(
            name,
            help=help_text,
            description=f"{description}\nWithout --api-url, --stack-name or ${API_URL_VARIABLE} it uses the "
            "local stack started by `make dev`.",
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    send = command(
        "send",
        "send one message, or one per row of a CSV file (--csv)",
        "Send one message (--to, repeatable), or one message per row of a CSV file (--csv): the CSV needs a "
        "to/msisdn/phone/mobile column, and --message is a template filled from the row's columns ('Hi {name}').\n"
        "Each row is sent under an Idempotency-Key made from its values, the sender and the template; accepted rows "
        f"are recorded in FILE{'.sent.jsonl'} with the gateway and account that accepted them, so running the same "
        "command again (same --api-url and --token) sends only the rows not yet accepted there.\n"
        "Exit code: 0 all sent, 1 something was rejected, 2 the command could not run (or the CSV has no rows).",
    )
    send.add_argument("--from", dest="sender", required=True, help="a sender ID or shortcode of the account")
    send.add_argument("--to", action="append", metavar="NUMBER", help="a recipient (repeatable; not with --csv)")
    send.add_argument("--message", metavar="TEXT", help="the text; with --csv, a template such as 'Hi {name}'")
    send.add_argument("--csv", metavar="FILE", help="send one message per row of this CSV file")
    send.add_argument("--dlr", action="store_true", help="ask for delivery report callbacks (delivery_report: yes)")
    send.add_argument("--idempotency-key", metavar="KEY", help="send once under this key (one message only)")
    send.add_argument(
        "--dry-run",
        action="store_true",
        help="only ask the gateway what it would cost and refuse (parts, encoding, invalid numbers); send nothing",
    )
    send.add_argument(
        "--concurrency",
        type=whole_number(1),
        default=4,
        metavar="N",
        help="rows in flight at once with --csv (default 4)",
    )
    send.set_defaults(func=_cmd_send)

    status = command(
        "status",
        "show a batch: status, counts, cost and each message's delivery report",
        "Show a batch (its status, counts by message status, parts and cost) and every message's delivery report.",
    )
    status.add_argument("reference_id", metavar="REFERENCE_ID", help="the reference_id a send answered")
    status.set_defaults(func=_cmd_status)

    tail = command(
        "tail",
        "follow batches' delivery reports until every message is final",
        "Poll the batches' delivery reports and print each message's status change once, until every message is "
        "in a final state (delivered, failed, expired, rejected, cancelled), --timeout passes or Ctrl-C.\n"
        "The API has no listing of batches: name them, or use --csv FILE for the batches a bulk send recorded.\n"
        "With --json, one JSON object per line. Exit code: 0 all final, 1 timed out or refused, 2 cannot run.",
    )
    tail.add_argument("reference_ids", nargs="*", metavar="REFERENCE_ID", help="batches to follow")
    tail.add_argument(
        "--csv", metavar="FILE", help="also follow the batches accepted from this CSV (its progress file)"
    )
    tail.add_argument(
        "--interval", type=number(0.1), default=1.0, metavar="SECONDS", help="between polls (default 1, min 0.1)"
    )
    tail.add_argument("--timeout", type=number(0), metavar="SECONDS", help="stop after this long (default: never)")
    tail.set_defaults(func=_cmd_tail)

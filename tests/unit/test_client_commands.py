"""The client commands' plumbing: which gateway and token they use, and how they read the API's pages and errors."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sms_gateway_tools import client_commands
from sms_gateway_tools.admin import TargetNotFound
from sms_gateway_tools.client_commands import ApiError, GatewayClient, resolve_api_url, resolve_token


@pytest.fixture
def no_local_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    from sms_gateway_tools.localstack import stack

    monkeypatch.setattr(stack, "default_state_dir", lambda: tmp_path)
    monkeypatch.delenv(client_commands.API_URL_VARIABLE, raising=False)
    monkeypatch.delenv(client_commands.TOKEN_VARIABLE, raising=False)
    return tmp_path


def test_the_gateway_is_the_flag_then_the_variable_then_the_running_local_stack(
    no_local_stack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(TargetNotFound, match="pass --api-url"):
        resolve_api_url(None, None)
    (no_local_stack / "stack.json").write_text(json.dumps({"api_url": "http://127.0.0.1:3999"}))
    assert resolve_api_url(None, None) == "http://127.0.0.1:3999"
    monkeypatch.setenv(client_commands.API_URL_VARIABLE, "https://sms.example/")
    assert resolve_api_url(None, None) == "https://sms.example"
    assert resolve_api_url("http://127.0.0.1:4000/", None) == "http://127.0.0.1:4000"


def test_a_token_is_required(no_local_stack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TargetNotFound, match="SMS_GATEWAY_TOKEN"):
        resolve_token(None)
    monkeypatch.setenv(client_commands.TOKEN_VARIABLE, "from-env")
    assert resolve_token(None) == "from-env"
    assert resolve_token("flag") == "flag"


def test_delivery_reports_follow_the_cursor_to_the_last_page() -> None:
    pages = {None: (["m1", "m2"], "c1"), "c1": (["m3"], "c2"), "c2": ([], None)}
    seen_cursors: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer t"
        cursor = request.url.params.get("next")
        seen_cursors.append(cursor)
        ids, following = pages[cursor]
        return httpx.Response(200, json={"data": [{"message_id": i} for i in ids], "next": following})

    with GatewayClient("http://gw", "t", transport=httpx.MockTransport(handler)) as client:
        assert [m["message_id"] for m in client.delivery_reports("1")] == ["m1", "m2", "m3"]
    assert seen_cursors == [None, "c1", "c2"]


def test_the_gateway_s_error_message_and_status_are_kept() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(402, json={"status_code": 402, "message": "insufficient credits: 3 needed, 1 left"})

    with (
        GatewayClient("http://gw", "t", transport=httpx.MockTransport(handler)) as client,
        pytest.raises(ApiError) as raised,
    ):
        client.send({"from": "48974", "to": "0802", "message": "x"}, "k")
    assert raised.value.status_code == 402
    assert str(raised.value) == "insufficient credits: 3 needed, 1 left (HTTP 402)"


def test_an_unreachable_gateway_is_said_without_an_http_status_it_never_gave() -> None:
    # Given a gateway that refuses the connection
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    # When the client sends
    with (
        GatewayClient("http://127.0.0.1:1", "t", transport=httpx.MockTransport(handler)) as client,
        pytest.raises(ApiError) as raised,
    ):
        client.send({"from": "48974", "to": "0802", "message": "x"}, "k")
    # Then the error says it could not reach it, with no "(HTTP 0)": there was no answer at all
    assert str(raised.value) == "cannot reach the gateway at http://127.0.0.1:1: [Errno 111] Connection refused"
    assert client_commands._fail(raised.value) == client_commands.CANNOT_RUN


def test_a_retry_under_a_key_is_byte_for_byte_the_same_request() -> None:
    bodies: list[tuple[str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append((request.headers["Idempotency-Key"], request.content))
        return httpx.Response(200, json={"reference_id": "1", "recipients_processed": 1})

    with GatewayClient("http://gw", "t", transport=httpx.MockTransport(handler)) as client:
        for _ in range(2):
            client.send(client_commands.send_body("48974", "0802", "Hi Ada", delivery_report=False), "csv-1")
    assert bodies[0] == bodies[1]
    assert json.loads(bodies[0][1]) == {"from": "48974", "to": "0802", "message": "Hi Ada"}


def _answers(*statuses: int) -> tuple[httpx.MockTransport, list[str]]:
    """A gateway answering these statuses in turn (200 = accepted), recording each request's key."""
    keys: list[str] = []
    messages = {409: "a request with this idempotency key is still being processed; retry later", 503: "unavailable"}

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        status = statuses[len(keys) - 1]
        if status == 200:
            return httpx.Response(200, json={"reference_id": "7", "recipients_processed": 1})
        return httpx.Response(status, json={"status_code": status, "message": messages.get(status, "refused")})

    return httpx.MockTransport(handler), keys


def test_a_transient_failure_is_retried_under_the_same_key() -> None:
    transport, keys = _answers(503, 409, 200)
    with GatewayClient("http://gw", "t", transport=transport) as client:
        answer = client_commands.send_with_retries(client, {"to": "0802"}, "csv-1", (0.0, 0.0, 0.0))
    assert answer["reference_id"] == "7"
    assert keys == ["csv-1", "csv-1", "csv-1"]


def test_a_refusal_is_not_retried_and_retries_end() -> None:
    transport, keys = _answers(400)
    with GatewayClient("http://gw", "t", transport=transport) as client, pytest.raises(ApiError, match="HTTP 400"):
        client_commands.send_with_retries(client, {"to": "0802"}, "csv-1", (0.0, 0.0))
    assert len(keys) == 1
    transport, keys = _answers(503, 503, 503)
    with GatewayClient("http://gw", "t", transport=transport) as client, pytest.raises(ApiError, match="HTTP 503"):
        client_commands.send_with_retries(client, {"to": "0802"}, "csv-1", (0.0, 0.0))
    assert len(keys) == 3


def test_review_a_retry_waits_as_long_as_the_gateway_s_retry_after_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a gateway that is busy and says when to come back (a throttle, a send undone for want of time)
    answers = [(429, "7"), (503, "2"), (200, None)]

    def handler(request: httpx.Request) -> httpx.Response:
        status, retry_after = answers.pop(0)
        if status == 200:
            return httpx.Response(200, json={"reference_id": "7", "recipients_processed": 1})
        body = {"status_code": status, "message": "busy"}
        return httpx.Response(status, json=body, headers={"Retry-After": retry_after} if retry_after else None)

    slept: list[float] = []
    monkeypatch.setattr(client_commands.time, "sleep", slept.append)
    # When a row is sent with the CLI's pauses (0.5 s, 1 s, 2 s)
    with GatewayClient("http://gw", "t", transport=httpx.MockTransport(handler)) as client:
        answer = client_commands.send_with_retries(client, {"to": "0802"}, "csv-1", client_commands.RETRY_PAUSES)
    # Then each retry waits what the gateway asked, not less: tried again at 0.5 s and 1.5 s, still inside the 7 s
    # the gateway asked for, the row was given up on as rejected with the gateway's answer
    assert answer["reference_id"] == "7"
    assert slept == [7.0, 2.0]
    # And a wait longer than a run should hold a row for gives the row up at once (a later run sends it)
    answers.extend([(429, "3600"), (200, None)])
    slept.clear()
    with (
        GatewayClient("http://gw", "t", transport=httpx.MockTransport(handler)) as client,
        pytest.raises(ApiError, match="HTTP 429"),
    ):
        client_commands.send_with_retries(client, {"to": "0802"}, "csv-1", client_commands.RETRY_PAUSES)
    assert slept == []


@pytest.mark.parametrize("command", ["send", "status", "tail"])
def test_every_client_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from sms_gateway_tools import cli

    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    assert "--api-url" in capsys.readouterr().out


def test_a_csv_send_refuses_options_that_are_for_one_message(capsys: pytest.CaptureFixture[str]) -> None:
    from sms_gateway_tools import cli

    common = ["send", "--csv", "x.csv", "--from", "48974", "--message", "Hi", "--api-url", "http://gw", "--token", "t"]
    assert cli.main([*common, "--to", "0802"]) == 2
    assert "--to and --csv do not go together" in capsys.readouterr().err
    assert cli.main([*common, "--idempotency-key", "k"]) == 2
    assert "each row gets its own key" in capsys.readouterr().err


def test_a_send_whose_gateway_refused_a_recipient_exits_1(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # Given a gateway that sends to the first number and refuses the second (it opted out: the 9bits answer's
    # `refused`, dialects/ninebits.py), as it answers a two-recipient send
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(
                200,
                json={
                    "status_code": 200,
                    "message": "request is being processed",
                    "reference_id": "386172872980037029",
                    "recipients_processed": 1,
                    "refused": [{"to": "2348020000001", "reason": "2348020000001 opted out of 48974 (STOP)"}],
                },
            )
        return httpx.Response(200, json={"reference_id": "386172872980037029", "parts": 1, "cost": 1})

    monkeypatch.setattr(
        client_commands,
        "_open_client",
        lambda args: GatewayClient("http://gw", "t", transport=httpx.MockTransport(handler)),
    )
    from sms_gateway_tools import cli

    # When the client sends to both
    code = cli.main(
        ["send", "--from", "48974", "--to", "2348020000000", "--to", "2348020000001", "--message", "Hi", "--json"]
    )
    out = json.loads(capsys.readouterr().out)
    assert out["refused"]
    # Then (docs/cli.md) "1: the gateway refused something": a script must not read 0 as "both were sent"
    assert code == 1


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "soon"])
def test_tail_refuses_an_interval_that_would_spin_or_fail(interval, capsys) -> None:
    from sms_gateway_tools import cli

    # When tail is asked to poll every 0 s (a tight loop on the API), a negative or no number of seconds
    with pytest.raises(SystemExit) as stopped:
        cli.main(["tail", "386172872980037029", "--interval", interval])
    # Then argparse refuses it before any request, exit 2, saying why
    assert stopped.value.code == 2
    assert "--interval" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "flag", "said"),
    [
        (["local", "--port", "70000"], "--port", "0 to 65535"),
        (["local", "--port", "-1"], "--port", "0 to 65535"),
        (["local", "--failure-rate", "1.5"], "--failure-rate", "from 0 to 1"),
        (["local", "--dlr-delay", "-1"], "--dlr-delay", "at least 0"),
        (["chaos", "--kill-rate", "3"], "--kill-rate", "from 0 to 1"),
        (["chaos", "--send-failure-rate", "-0.1"], "--send-failure-rate", "from 0 to 1"),
        (["chaos", "--scheduled-share", "nan"], "--scheduled-share", "from 0 to 1"),
        (["chaos", "--cancel-share", "many"], "--cancel-share", "not a number"),
        (["chaos", "--messages", "-5"], "--messages", "at least 1"),
        (["chaos", "--wave", "0"], "--wave", "at least 1"),
        (["chaos", "--accounts", "0"], "--accounts", "at least 1"),
        (["chaos", "--time-limit", "0"], "--time-limit", "more than 0"),
        (["chaos", "--dlr-wait", "0"], "--dlr-wait", "1 to 259200"),
        (["send", "--from", "x", "--concurrency", "0"], "--concurrency", "at least 1"),
        (["tail", "1", "--timeout", "-1"], "--timeout", "at least 0"),
    ],
)
def test_an_out_of_range_number_is_refused_before_anything_starts(argv, flag, said, monkeypatch, capsys) -> None:
    from sms_gateway_tools import cli

    # Given commands that would start a stack, a chaos run or reach a gateway
    def started(args):
        raise AssertionError(f"started with {args}")

    monkeypatch.setattr(cli, "_local", started)
    monkeypatch.setattr(cli, "_chaos", started)
    # When a port, rate, count or number of seconds is out of its range
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    # Then argparse refuses it, exit 2, naming the flag and its range, and nothing started
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and said in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ["local", "--port", "0", "--failure-rate", "1", "--dlr-delay", "0"],
        ["local", "--port", "65535", "--failure-rate", "0"],
        ["chaos", "--kill-rate", "0", "--cancel-share", "1", "--messages", "1", "--wave", "1", "--dlr-wait", "259200"],
    ],
)
def test_numbers_at_the_ends_of_their_ranges_are_taken(argv) -> None:
    from sms_gateway_tools import cli

    cli.build_parser().parse_args(argv)


CsvGateways = tuple[dict[str, int], Path, Callable[[str, str], int]]


@pytest.fixture
def csv_gateways(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CsvGateways:
    """Fake gateways, one per --api-url, that accept every send: the sends each got (per URL and token), a
    two-row CSV, and `send_csv(api_url, token)`, which runs `send --csv` on it and answers the exit code."""
    from sms_gateway_tools import cli

    sends: dict[str, int] = {}

    def gateway(url: str, token: str) -> GatewayClient:
        def handler(request: httpx.Request) -> httpx.Response:
            if request.method == "POST":
                sends[f"{url} {token}"] = sends.get(f"{url} {token}", 0) + 1
                return httpx.Response(200, json={"status_code": 200, "reference_id": "7", "recipients_processed": 1})
            return httpx.Response(200, json={"reference_id": "7", "parts": 1, "cost": 1})

        return GatewayClient(url, token, transport=httpx.MockTransport(handler))

    monkeypatch.setattr(client_commands, "_open_client", lambda args: gateway(args.api_url, args.token))
    csv_file = tmp_path / "customers.csv"
    csv_file.write_text("to,name\n2348020000000,Ada\n2348030000000,Bola\n")
    run = ["send", "--csv", str(csv_file), "--from", "48974", "--message", "Hi {name}", "--json"]
    return sends, csv_file, lambda api_url, token: cli.main([*run, "--api-url", api_url, "--token", token])


def _rewrite_progress(csv_file: Path, rewrite: Callable[[bytes], bytes]) -> None:
    """Rewrites the CSV's progress file as `rewrite` makes it from its bytes (an older version or another tool)."""
    progress = csv_file.with_name(csv_file.name + ".sent.jsonl")
    progress.write_bytes(rewrite(progress.read_bytes()))


def test_a_csv_sent_to_one_gateway_is_still_sent_to_another(
    csv_gateways: CsvGateways, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two gateways (a local stack and production, say) that accept every send
    sends, csv_file, send_csv = csv_gateways
    # And the campaign was sent through the first one
    assert send_csv("http://127.0.0.1:3000", "local") == 0
    assert sends == {"http://127.0.0.1:3000 local": 2}
    capsys.readouterr()
    # When the same command is run against the second, with that gateway's token
    code = send_csv("https://sms.example.com", "prod")
    out = json.loads(capsys.readouterr().out)
    # Then its rows are sent there: they were accepted by another gateway, not this one
    assert sends.get("https://sms.example.com prod") == 2, out
    assert code == 0
    # And with another token (another account) on the same gateway they are sent for that account too
    assert send_csv("https://sms.example.com", "secret-2") == 0
    assert sends.get("https://sms.example.com secret-2") == 2
    # And the progress file names each target without keeping its token
    progress = csv_file.with_name("customers.csv.sent.jsonl").read_text()
    assert "secret" not in progress
    assert {json.loads(line)["target"].split()[0] for line in progress.splitlines()} == {
        "http://127.0.0.1:3000",
        "https://sms.example.com",
    }


@pytest.mark.parametrize("separator", [";", "\t"], ids=["semicolon", "tab"])
def test_review_a_csv_excel_saved_with_semicolons_or_tabs_is_read(
    csv_gateways: CsvGateways, capsys: pytest.CaptureFixture[str], separator: str
) -> None:
    # Given a CSV as Excel saves it where ',' is the decimal comma (its list separator is ';': most of Europe, Latin
    # America, Indonesia), or as a tab-separated export, with a comma inside a cell
    sends, csv_file, send_csv = csv_gateways
    rows = [["to", "name"], ["2348020000000", "Ada, Jr."], ["2348030000000", "Bola"]]
    csv_file.write_text("".join(separator.join(row) + "\r\n" for row in rows), encoding="utf-8-sig")
    # When it is sent
    code = send_csv("https://sms.example.com", "prod")
    printed = capsys.readouterr()
    # Then its rows are read by that separator and sent, the comma kept in its cell
    assert code == 0, printed.err
    out = json.loads(printed.out)
    assert (out["accepted"], out["rejected"]) == (2, 0), out
    assert sends == {"https://sms.example.com prod": 2}


def test_review_a_csv_not_saved_as_utf8_is_refused_naming_its_line_and_how_to_save_it(
    csv_gateways: CsvGateways, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a CSV Excel saved as "CSV (Comma delimited)" on Windows: cp1252, its first accented name on line 1002
    sends, csv_file, send_csv = csv_gateways
    rows = [f"23480200{n:05d},Ada\r\n" for n in range(1000)]
    csv_file.write_bytes("".join(["to,name\r\n", *rows, "2348030000000,Zoë\r\n"]).encode("cp1252"))
    # When it is sent
    code = send_csv("https://sms.example.com", "prod")
    err = capsys.readouterr().err
    # Then nothing is sent, and the error names the line the first such character is on and how to save the file,
    # instead of Python's decoder error (byte offsets, "invalid continuation byte")
    assert (code, sends) == (2, {}), err
    assert "line 1002" in err and '"CSV UTF-8' in err, err
    assert "codec" not in err, err


def test_a_csv_run_again_against_the_same_gateway_and_token_sends_nothing_twice(
    csv_gateways: CsvGateways, capsys: pytest.CaptureFixture[str]
) -> None:
    sends, _, send_csv = csv_gateways
    # Given the campaign was sent to production, and then to the local stack
    assert send_csv("https://sms.example.com", "prod") == 0
    assert send_csv("http://127.0.0.1:3000", "local") == 0
    capsys.readouterr()
    # When it is run against production again (its URL written with a trailing slash this time)
    code = send_csv("https://sms.example.com/", "prod")
    out = json.loads(capsys.readouterr().out)
    # Then nothing more is sent there: both rows were accepted by it already
    assert code == 0
    assert sends == {"https://sms.example.com prod": 2, "http://127.0.0.1:3000 local": 2}
    assert (out["accepted"], out["already_accepted"]) == (0, 2)


@pytest.mark.parametrize("while_", ["checking-the-file", "reading-the-progress-file"])
def test_review_ctrl_c_before_a_csv_send_starts_sends_nothing_and_says_so(
    csv_gateways: CsvGateways, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, while_: str
) -> None:
    from sms_gateway_tools import bulk_send

    sends, csv_file, send_csv = csv_gateways
    # Given a campaign sent before (its progress file records both rows), then grown by a row
    assert send_csv("https://sms.example.com", "prod") == 0
    with csv_file.open("a") as more:
        more.write("2348040000000,Chidi\n")
    capsys.readouterr()

    # And a user who presses Ctrl-C while the file is read through before anything is sent (a big file takes a
    # while), or while its progress file is read
    def ctrl_c(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    if while_ == "checking-the-file":
        monkeypatch.setattr(client_commands, "read_rows", ctrl_c)
    else:
        monkeypatch.setattr(bulk_send.ProgressFile, "_take", ctrl_c)
    # When the run starts
    try:
        code: int | None = send_csv("https://sms.example.com", "prod")
    except KeyboardInterrupt:
        code = None
    err = capsys.readouterr().err
    # Then it ends as Ctrl-C does once rows go (exit 130, a line saying so), not in a traceback, and nothing is sent
    assert code == client_commands.INTERRUPTED, "Ctrl-C escaped the command: a traceback"
    assert "interrupted" in err, err
    assert sends == {"https://sms.example.com prod": 2}


def test_review_a_progress_file_saved_with_a_byte_order_mark_still_counts_its_first_row(
    csv_gateways: CsvGateways, capsys: pytest.CaptureFixture[str]
) -> None:
    sends, csv_file, send_csv = csv_gateways
    # Given a campaign sent, whose progress file was then saved by a Windows tool (PowerShell's Set-Content -Encoding
    # UTF8, .NET's Encoding.UTF8: a byte order mark in front, CRLF line ends)
    assert send_csv("https://sms.example.com", "prod") == 0
    _rewrite_progress(csv_file, lambda lines: b"\xef\xbb\xbf" + lines.replace(b"\n", b"\r\n"))
    capsys.readouterr()
    # When the same command is run again
    code = send_csv("https://sms.example.com", "prod")
    out = json.loads(capsys.readouterr().out)
    # Then no row is sent twice: the first line's row counts as accepted as the others do (after the gateway's 24 hours
    # it would be sent and charged again)
    assert (out["accepted"], out["already_accepted"]) == (0, 2), out
    assert sends == {"https://sms.example.com prod": 2}
    assert code == 0


def test_csv_progress_recorded_without_a_gateway_counts_for_none(
    csv_gateways: CsvGateways, capsys: pytest.CaptureFixture[str]
) -> None:
    sends, csv_file, send_csv = csv_gateways
    # Given a progress file written by an older version, which recorded rows without the gateway they went to
    assert send_csv("http://127.0.0.1:3000", "local") == 0

    def without_targets(lines: bytes) -> bytes:
        entries = [json.loads(line) for line in lines.splitlines()]
        return "".join(json.dumps({k: v for k, v in e.items() if k != "target"}) + "\n" for e in entries).encode()

    _rewrite_progress(csv_file, without_targets)
    capsys.readouterr()
    # When the file is sent to production
    assert send_csv("https://sms.example.com", "prod") == 0
    # Then its rows are sent (under their keys), and the run says why the recorded rows did not count
    assert sends.get("https://sms.example.com prod") == 2
    assert "2 rows" in capsys.readouterr().err


def test_tail_csv_follows_only_the_batches_this_gateway_accepted(
    csv_gateways: CsvGateways, capsys: pytest.CaptureFixture[str]
) -> None:
    from sms_gateway_tools import cli

    _, csv_file, send_csv = csv_gateways
    # Given the campaign was sent through the local stack only
    assert send_csv("http://127.0.0.1:3000", "local") == 0
    capsys.readouterr()
    # When production is asked to follow the CSV's batches
    code = cli.main(["tail", "--csv", str(csv_file), "--api-url", "https://sms.example.com", "--token", "prod"])
    # Then there are none to follow there (the local stack's reference ids mean nothing to production)
    assert code == 2
    assert "none sent to this gateway" in capsys.readouterr().err


def test_a_csv_dry_run_the_balance_does_not_cover_says_so_in_its_exit_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sms_gateway_tools import cli

    # Given an account with 1 credit, and a gateway whose dry run quotes each one-recipient row at 1 credit (each,
    # alone, within the balance: would_be_accepted)
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/ng/v1/batches/dry_run"
        quote = {"total_cost": 1, "balance": 1, "balance_sufficient": True, "would_be_accepted": True, "invalid": []}
        return httpx.Response(200, json={"status_code": 200, **quote})

    monkeypatch.setattr(
        client_commands,
        "_open_client",
        lambda args: GatewayClient("http://gw", "t", transport=httpx.MockTransport(handler)),
    )
    csv_file = tmp_path / "customers.csv"
    csv_file.write_text("to,name\n2348020000000,Ada\n2348030000000,Bola\n")
    # When the campaign of two rows is checked with --dry-run before it is sent (as a script's gate)
    code = cli.main(["send", "--csv", str(csv_file), "--from", "48974", "--message", "Hi {name}", "--dry-run"])
    out = capsys.readouterr().out
    # Then the run says the balance does not cover them ...
    assert "would cost 2 credits (balance 1)" in out and "would be refused" in out
    # ... and exits 1, as docs/cli.md says a dry run does "when the send would be refused": the real send of the same
    # command is refused (HTTP 402) on its second row. It exits 0, every row "would be accepted"
    assert code == 1
    # And a script reading --json reads it too
    argv = ["send", "--csv", str(csv_file), "--from", "48974", "--message", "Hi {name}", "--dry-run", "--json"]
    code = cli.main(argv)
    quote = json.loads(capsys.readouterr().out)
    assert (code, quote["new_cost"], quote["balance"], quote["balance_sufficient"]) == (1, 2, 1, False)
    # While one row, which the balance covers, would be accepted: exit 0
    csv_file.write_text("to,name\n2348020000000,Ada\n")
    code = cli.main(argv)
    quote = json.loads(capsys.readouterr().out)
    assert (code, quote["new_cost"], quote["balance_sufficient"]) == (0, 1, True)


def test_a_progress_file_that_cannot_be_written_is_an_error_not_a_claim_that_rows_are_recorded(
    csv_gateways: CsvGateways, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import errno

    from sms_gateway_tools import bulk_send

    sends, csv_file, _ = csv_gateways

    # Given the CSV's directory cannot take the progress file (a full disk, a read-only share)
    def cannot_write(self: object, result: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bulk_send.ProgressFile, "record", cannot_write)
    # When the campaign is sent (text output, as a person runs it), one row at a time
    from sms_gateway_tools import cli

    argv = ["send", "--csv", str(csv_file), "--from", "48974", "--message", "Hi {name}", "--concurrency", "1"]
    code = cli.main([*argv, "--api-url", "http://gw", "--token", "t"])
    captured = capsys.readouterr()
    # Then the first row went out, and the run says it could not record it (a rerun after 24 hours, when the gateway
    # has forgotten its key, sends it again) and sends no more: not exit 0 with "accepted rows are recorded in
    # customers.csv.sent.jsonl" while the file does not exist, every row's OSError lost in its worker thread
    assert sends == {"http://gw t": 1}
    assert not csv_file.with_name("customers.csv.sent.jsonl").exists()
    assert code == 2, captured.out
    assert "error: cannot record accepted rows in" in captured.err and "No space left on device" in captured.err
    assert "NOT recorded" in captured.out and "(lines 2)" in captured.out
    assert "accepted rows are recorded" not in captured.out


@pytest.mark.parametrize("command", ["send", "tail"])
def test_a_progress_file_that_cannot_be_read_is_an_error_not_a_traceback(
    csv_gateways: CsvGateways, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    from sms_gateway_tools import cli

    sends, csv_file, _ = csv_gateways
    # Given a progress file the command cannot read (here a directory of that name; a file without read permission
    # does the same)
    csv_file.with_name("customers.csv.sent.jsonl").mkdir()
    # When the campaign is sent, or its batches followed
    argv = ["send", "--csv", str(csv_file), "--from", "48974", "--message", "Hi {name}"]
    if command == "tail":
        argv = ["tail", "--csv", str(csv_file), "--timeout", "0"]
    code = cli.main([*argv, "--api-url", "http://gw", "--token", "t"])
    # Then it stops with a one-line error naming the file, before sending anything
    captured = capsys.readouterr()
    assert code == 2
    assert "error: cannot read the progress file" in captured.err and "Traceback" not in captured.err
    assert sends == {}


def test_review_a_csv_with_an_unterminated_quote_is_refused_before_anything_is_sent(
    csv_gateways: CsvGateways, capsys: pytest.CaptureFixture[str]
) -> None:
    sends, csv_file, send_csv = csv_gateways
    # Given a CSV whose second row opens a quote it never closes (a stray '"' typed before a name)
    csv_file.write_text('to,name\n2348020000000,"Ada\n2348030000000,Bola\n2348040000000,Chidi\n')
    # When it is sent
    code = send_csv("http://127.0.0.1:3000", "t")
    captured = capsys.readouterr()
    # Then nothing is sent: not Ada's row with the rest of the file as her name (an SMS of garbage, charged) while
    # Bola and Chidi are never sent and the run says every row was accepted, exit 0
    assert sends == {}, captured.out
    assert code == 2
    # And the error names the line where the quote opens, so the file can be fixed
    assert "line 2" in captured.err and "quote" in captured.err


def test_review_a_csv_cell_past_the_field_limit_is_an_error_not_a_traceback(
    csv_gateways: CsvGateways, capsys: pytest.CaptureFixture[str]
) -> None:
    sends, csv_file, send_csv = csv_gateways
    # Given a CSV whose quote is never closed and the rest of the file is long (a big campaign)
    rows = "".join(f"23480{n:08d},Customer {n}\n" for n in range(8000))
    csv_file.write_text(f'to,name\n2348020000000,"Ada\n{rows}')
    # When it is sent, it stops with a one-line error, before sending anything
    code = send_csv("http://127.0.0.1:3000", "t")
    captured = capsys.readouterr()
    assert (code, sends) == (2, {})
    assert captured.err.startswith("error: ") and "line 2" in captured.err


def test_review_empty_spreadsheet_rows_are_skipped_not_rejected(
    csv_gateways: CsvGateways, capsys: pytest.CaptureFixture[str]
) -> None:
    sends, csv_file, send_csv = csv_gateways
    # Given the campaign as Excel saves it: rows left empty in the sheet (between the customers, and formatted
    # ones below them) come out as lines of separators only, next to a truly blank line
    csv_file.write_bytes(b"to,name\r\n2348020000000,Ada\r\n,\r\n\r\n2348030000000,Bola\r\n,\r\n , \r\n")
    # When it is sent
    code = send_csv("http://127.0.0.1:3000", "t")
    out = json.loads(capsys.readouterr().out)
    # Then both customers are sent and the run succeeds: the empty rows are no rows, as the blank line is, not rows
    # "rejected: no number in the row" that make a script read the campaign as failed (exit 1)
    assert sends == {"http://127.0.0.1:3000 t": 2}
    assert (out["rows"], out["accepted"], out["rejected"]) == (2, 2, 0)
    assert code == 0


def test_review_a_csv_run_s_memory_does_not_grow_with_its_rows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys
    import tracemalloc

    from sms_gateway_tools import cli

    # Given a gateway that accepts every row at once (the CLI's sender answers without HTTP)
    monkeypatch.setattr(client_commands, "_open_client", lambda args: GatewayClient("http://gw", "t"))
    monkeypatch.setattr(
        client_commands, "_csv_sender", lambda client, sender, dlr: lambda to, text, key: ("386172887086388985", 1)
    )

    send = ["send", "--from", "48974", "--message", "Hi {name}", "--api-url", "http://gw", "--token", "t", "--csv"]

    def run(csv_file: Path, *flags: str) -> tuple[int, int, str]:
        """`send --csv` on the file: its exit code, the peak of Python's memory while it ran, and what it printed."""
        printed = csv_file.with_suffix(".out")
        with printed.open("w") as out, monkeypatch.context() as patched:
            patched.setattr(sys, "stdout", out)
            tracemalloc.start()
            try:
                code = cli.main([*send, str(csv_file), *flags])
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        return code, peak, printed.read_text()

    def campaign(rows: int) -> Path:
        """A campaign of `rows` rows, every tenth without a name (rejected: the summary lists each)."""
        csv_file = tmp_path / f"c{rows}.csv"
        lines = [f"2348{n:09d},{'' if n % 10 == 9 else 'Ada'}\n" for n in range(rows)]
        csv_file.write_text("to,name\n" + "".join(lines))
        return csv_file

    peaks: dict[int, list[int]] = {}
    for rows in (1_000, 10_000):
        csv_file = campaign(rows)
        # When it is sent (JSON summary), and run again (every row then recorded as accepted: a resumed campaign)
        code, first_peak, out = run(csv_file, "--json")
        summary = json.loads(out)
        assert (code, summary["rows"], summary["accepted"], summary["rejected"]) == (
            1,
            rows,
            rows * 9 // 10,
            rows // 10,
        )
        assert [result["line"] for result in summary["results"]] == list(range(2, rows + 2))
        code, again_peak, out = run(csv_file)
        assert code == 1
        assert f"already accepted (earlier run)  {rows * 9 // 10}" in out
        assert f"\n{rows + 1}  2348{rows - 1:09d}  no value for name" in out, out[-300:]
        peaks[rows] = [first_peak, again_peak]
    # Then ten times the rows take about the memory of a tenth of them, in both runs: what grows with the rows is kept
    # on disk (the results until the summary is printed, the rows' keys), not in memory
    assert peaks[10_000][0] < 2 * peaks[1_000][0], peaks
    assert peaks[10_000][1] < 2 * peaks[1_000][1], peaks


@pytest.mark.parametrize("table", ["results", "seen"], ids=["row-results", "repeat-keys"])
def test_review_a_full_temporary_directory_stops_the_run_and_a_rerun_sends_nothing_twice(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str
) -> None:
    from sms_gateway_tools import cli
    from sms_gateway_tools.scratch import Scratch

    # Given a gateway that accepts every row, noting the key of each send
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            sent.append(request.headers["Idempotency-Key"])
            return httpx.Response(
                200, json={"status_code": 200, "reference_id": str(len(sent)), "recipients_processed": 1}
            )
        return httpx.Response(200, json={"parts": 1, "cost": 1})

    client = lambda args: GatewayClient("http://gw", "t", transport=httpx.MockTransport(handler))  # noqa: E731
    monkeypatch.setattr(client_commands, "_open_client", client)
    csv_file = tmp_path / "customers.csv"
    csv_file.write_text("to,name\n" + "".join(f"2348{n:09d},Ada\n" for n in range(400)))
    argv = ["send", "--csv", str(csv_file), "--from", "48974", "--message", "Hi {name}", "--concurrency", "1"]

    # And a temporary directory that fills up while the run keeps its rows there (SQLite's "database or disk is
    # full" once the rows' results, or the keys that tell repeats apart, take a few more pages)
    opened = Scratch.__init__

    def filling_up(self: Scratch, schema: str) -> None:
        opened(self, schema)
        if f"CREATE TABLE {table} " in schema:
            [(pages,)] = self._db.execute("PRAGMA page_count").fetchall()
            self._db.execute(f"PRAGMA max_page_count = {pages + 3}")

    # When the campaign is sent
    with monkeypatch.context() as full:
        full.setattr(Scratch, "__init__", filling_up)
        code = cli.main(argv)
    captured = capsys.readouterr()
    # Then the run stops with an error saying so and where (exit 2), not carrying on with each row's result lost in
    # its worker thread (and the row left out of the progress file, for a rerun to send again) or a traceback
    assert code == 2, captured.err
    assert "database or disk is full" in captured.err and "SQLITE_TMPDIR" in captured.err, captured.err
    assert 0 < len(sent) < 400
    # And every row it sent is recorded in the progress file
    progress = csv_file.with_name("customers.csv.sent.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["key"] for line in progress) == sorted(sent)
    # So once there is room again, the same command sends the rest, and no row twice
    code = cli.main([*argv, "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert len(sent) == len(set(sent)) == 400
    assert summary["already_accepted"] + summary["accepted"] == 400


def test_review_tail_csv_s_memory_does_not_grow_with_the_batches_it_follows(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sys
    import tracemalloc

    from sms_gateway_tools import cli

    # Given a gateway where every batch has one message, delivered (answered without HTTP)
    def delivered(self: GatewayClient, reference_id: str) -> Iterator[dict[str, str]]:
        yield {
            "reference_id": reference_id,
            "message_id": f"{reference_id}0001",
            "to": "2348020000000",
            "status": "delivered",
        }

    monkeypatch.setattr(GatewayClient, "delivery_reports", delivered)
    target = client_commands.progress_target("http://gw", "t")

    def tail(batches: int) -> tuple[int, int, list[str]]:
        """`tail --csv` of a campaign whose progress file records `batches` batches: its exit code, the peak of
        Python's memory while it ran, and the lines it printed."""
        csv_file = tmp_path / f"c{batches}.csv"
        entries = (
            {"key": f"csv-{n}", "line": n + 2, "to": f"2348{n:09d}", "reference_id": f"38617{n:013d}", "cost": 1}
            for n in range(batches)
        )
        csv_file.with_name(f"{csv_file.name}.sent.jsonl").write_text(
            "".join(json.dumps({**entry, "target": target}) + "\n" for entry in entries)
        )
        printed = tmp_path / f"c{batches}.out"
        with printed.open("w") as out, monkeypatch.context() as patched:
            patched.setattr(sys, "stdout", out)
            tracemalloc.start()
            try:
                code = cli.main(["tail", "--csv", str(csv_file), "--api-url", "http://gw", "--token", "t", "--json"])
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        return code, peak, printed.read_text().splitlines()

    # When the batches of a campaign of 1,000 rows, and of one of 10,000, are followed
    peaks: dict[int, int] = {}
    for batches in (1_000, 10_000):
        code, peaks[batches], lines = tail(batches)
        # Then each batch's message is printed once, and tail ends (every message delivered)
        assert code == 0
        assert len(lines) == batches
        assert json.loads(lines[-1])["reference_id"] == f"38617{batches - 1:013d}"
    # And ten times the batches take about the memory of a tenth of them: the batches' ids and the statuses seen are
    # kept on disk, not in memory (a campaign of millions of rows is followed on a small machine too)
    assert peaks[10_000] < 2 * peaks[1_000], peaks


@pytest.mark.parametrize(
    "placeholder",
    ["{name.upper}", "{name.__class__}", "{name[0]}", "{name!r}", "{name:>10}", "{nmae}"],
    ids=["method", "dunder", "index", "conversion", "format-spec", "typo"],
)
def test_review_a_template_placeholder_that_is_not_a_column_is_refused_before_anything_is_sent(
    csv_gateways: CsvGateways, capsys: pytest.CaptureFixture[str], placeholder: str
) -> None:
    from sms_gateway_tools import cli

    sends, csv_file, _ = csv_gateways
    # Given a template with a placeholder that is not one of the CSV's columns as written (to, name): an attribute, an
    # index, a conversion, a format, a typo
    argv = ["send", "--csv", str(csv_file), "--from", "48974", "--message", f"Hi {placeholder}, welcome"]
    # When the campaign is sent
    code = cli.main([*argv, "--api-url", "http://gw", "--token", "t"])
    err = capsys.readouterr().err
    # Then nothing is sent or charged (not "Hi <built-in method upper of str object at 0x...>" to every customer, nor
    # "Hi 'Ada'", "Hi A", nor every row rejected one by one), and the error names the placeholder and the columns
    assert (code, sends) == (2, {}), err
    assert placeholder in err and "to, name" in err, err


WRONG_URL_ANSWERS = {
    "api-gateway-404": (404, "application/json", '{"message":"Not Found"}'),
    "html-404": (404, "text/html", "<html><body><h1>404 Not Found</h1></body></html>"),
    "a-web-page": (200, "text/html", "<!doctype html><html><head><title>Example Corp</title></head></html>"),
}


@pytest.mark.parametrize("answer", WRONG_URL_ANSWERS, ids=list(WRONG_URL_ANSWERS))
def test_review_a_wrong_api_url_stops_the_run_at_its_first_answer_and_a_rerun_sends_every_row(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], answer: str
) -> None:
    from sms_gateway_tools import cli

    # Given a gateway at https://sms.example.com, and a campaign of 50 rows
    sends: dict[str, int] = {}

    def gateway(url: str) -> GatewayClient:
        def handler(request: httpx.Request) -> httpx.Response:
            if request.method == "POST":
                sends[url] = sends.get(url, 0) + 1
            if url != "https://sms.example.com":
                status, content_type, text = WRONG_URL_ANSWERS[answer]
                return httpx.Response(status, text=text, headers={"Content-Type": content_type})
            if request.method == "POST":
                return httpx.Response(200, json={"status_code": 200, "reference_id": "7", "recipients_processed": 1})
            return httpx.Response(200, json={"reference_id": "7", "parts": 1, "cost": 1})

        return GatewayClient(url, "t", transport=httpx.MockTransport(handler))

    monkeypatch.setattr(client_commands, "_open_client", lambda args: gateway(args.api_url))
    csv_file = tmp_path / "customers.csv"
    csv_file.write_text("to,name\n" + "".join(f"2348020{n:06d},Ada\n" for n in range(50)))
    argv = ["send", "--csv", str(csv_file), "--from", "48974", "--message", "Hi {name}", "--concurrency", "1"]
    # When it is sent to a wrong URL: a path too many (an API Gateway's 404), a site's 404 page, or its home page
    code = cli.main([*argv, "--api-url", "https://sms.example.com/ng/v1", "--token", "t"])
    printed = capsys.readouterr()
    # Then the run stops at the first answer, saying the URL is not the gateway's (exit 2), instead of 50 "rejected"
    # rows, each sent in turn
    assert (code, sends) == (2, {"https://sms.example.com/ng/v1": 1}), printed.err
    assert "https://sms.example.com/ng/v1" in printed.err and "API URL" in printed.err, printed.err
    assert "rejected rows" not in printed.out, printed.out
    assert "50 rows not sent" in printed.err, printed.err
    # And run again with the right URL, every row is sent there
    code = cli.main([*argv, "--api-url", "https://sms.example.com", "--token", "t", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert (code, out["accepted"], sends["https://sms.example.com"]) == (0, 50, 50)


def _ctrl_c(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("command", ["status", "tail", "admin"])
def test_review_ctrl_c_in_any_command_is_one_line_and_exit_130(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sms_gateway_tools import admin, cli

    # Given a user who presses Ctrl-C while the command waits on the gateway (a slow page of delivery reports, a
    # long `tail`, an admin command's DynamoDB call)
    monkeypatch.setattr(GatewayClient, "batch", _ctrl_c)
    monkeypatch.setattr(GatewayClient, "delivery_reports", _ctrl_c)
    monkeypatch.setattr(admin, "_target", lambda args: "http://gw")
    monkeypatch.setattr(admin, "show_account", _ctrl_c)
    gateway = ["--api-url", "http://gw", "--token", "t"]
    argv = {
        "status": ["status", "386172872980037029", *gateway],
        "tail": ["tail", "386172872980037029", *gateway],
        "admin": ["admin", "show-account", "--account", "acc_1"],
    }[command]
    # When the command runs
    try:
        code: int | None = cli.main(argv)
    except KeyboardInterrupt:
        code = None
    # Then it ends in one line saying so and the exit code of an interrupted command (128 + SIGINT), not a traceback
    assert code == client_commands.INTERRUPTED, "Ctrl-C escaped the command: a traceback"
    assert capsys.readouterr().err.strip() == "interrupted"


def _documented_csv_summary() -> dict[str, Any]:
    """The `send --csv --json` example in docs/cli.md."""
    doc = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    after = doc.split("`--json` prints the summary as one object:", 1)[1]
    example: dict[str, Any] = json.loads(after.split("```json", 1)[1].split("```", 1)[0])
    return example


def test_review_the_documented_csv_summary_has_the_fields_a_real_one_has(
    csv_gateways: CsvGateways, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the summary docs/cli.md shows a script, and the one a real `send --csv --json` prints
    _, _, send_csv = csv_gateways
    assert send_csv("https://sms.example.com", "prod") == 0
    printed = json.loads(capsys.readouterr().out)
    documented = _documented_csv_summary()
    # Then they have the same fields, in the same order, and so do their rows' results
    assert list(documented) == list(printed)
    assert list(documented["results"][0]) == list(printed["results"][0])


@pytest.mark.parametrize("status", [404, 405])
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["send", "dry-run"])
def test_review_a_single_send_to_a_wrong_api_url_says_the_url_is_wrong_and_exits_2(
    status: int, dry_run: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sms_gateway_tools import cli

    # Given an API URL with a path too many, where an API Gateway answers its own JSON 404 (or 405: no POST there)
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"message": "Not Found" if status == 404 else "Method Not Allowed"})

    url = "https://sms.example.com/ng/v1"
    monkeypatch.setattr(
        client_commands, "_open_client", lambda args: GatewayClient(url, "t", transport=httpx.MockTransport(handler))
    )
    # When one message is sent (or quoted) there
    code = cli.main(["send", "--from", "48974", "--to", "2348020000000", "--message", "Hi", *dry_run])
    err = capsys.readouterr().err
    # Then, as `send --csv` does, it says the URL is not the gateway's and exits 2 (the command could not run), not 1
    # ("the gateway refused something") with a bare "Not Found (HTTP 404)"
    assert code == client_commands.CANNOT_RUN, err
    assert url in err and "API URL" in err and f"HTTP {status}" in err, err


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["send", "dry-run"])
def test_review_a_csv_summary_s_counts_come_before_its_results(
    dry_run: list[str], csv_gateways: CsvGateways, capsys: pytest.CaptureFixture[str]
) -> None:
    from sms_gateway_tools import cli

    # Given a `send --csv --json` run, whose "results" has a line a row (millions for a campaign)
    _, csv_file, _ = csv_gateways
    argv = ["send", "--csv", str(csv_file), "--from", "48974", "--message", "Hi {name}", "--json", *dry_run]
    cli.main([*argv, "--api-url", "https://sms.example.com", "--token", "prod"])
    printed = json.loads(capsys.readouterr().out)
    # Then every summary key (not_sent, progress_file, a dry run's balance) comes before the results, in what it
    # prints and in what docs/cli.md shows: a script reading the object as a stream has the summary before the rows
    assert list(printed)[-1] == "results", list(printed)
    assert list(_documented_csv_summary())[-1] == "results"


MALFORMED_API_URLS = {
    "a letter O in the port": "http://127.0.0.1:30OO",
    "no scheme": "sms.example.com",
    "a bracket not closed": "http://[::1",
    "another scheme": "ftp://sms.example.com",
}


@pytest.mark.parametrize("url", MALFORMED_API_URLS.values(), ids=list(MALFORMED_API_URLS))
@pytest.mark.parametrize("command", ["send", "send --csv", "status", "tail"])
def test_review_a_malformed_api_url_is_refused_naming_it_not_a_traceback(
    url: str, command: str, no_local_stack: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sms_gateway_tools import cli

    # Given an API URL mistyped in $SMS_GATEWAY_API_URL, and nothing listening anywhere
    monkeypatch.setenv(client_commands.API_URL_VARIABLE, url)
    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", _no_network)
    csv_file = no_local_stack / "customers.csv"
    csv_file.write_text("to,name\n2348020000000,Ada\n")
    argv = {
        "send": ["send", "--from", "48974", "--to", "2348020000000", "--message", "Hi"],
        "send --csv": ["send", "--from", "48974", "--csv", str(csv_file), "--message", "Hi {name}"],
        "status": ["status", "386172872980037029"],
        "tail": ["tail", "386172872980037029"],
    }[command]
    # When a command runs
    code = cli.main([*argv, "--token", "t"])
    err = capsys.readouterr().err
    # Then it is refused before any request, exit 2, naming the URL and where it came from (not a traceback, and not
    # "cannot reach the gateway at sms.example.com/" as if one had been tried)
    assert code == client_commands.CANNOT_RUN, err
    assert err.startswith("error: ") and repr(url) in err and client_commands.API_URL_VARIABLE in err, err
    assert "cannot reach" not in err, err


def _no_network(*args: object, **kwargs: object) -> httpx.Response:
    raise AssertionError("a request was made")


def test_review_an_api_url_s_surrounding_spaces_and_line_ends_are_not_part_of_it(
    no_local_stack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the variable set from a file saved with Windows line ends, or a URL pasted with a space
    monkeypatch.setenv(client_commands.API_URL_VARIABLE, "https://sms.example.com/Prod/\r")
    # Then the URL is the gateway's, without them (and its trailing slash)
    assert resolve_api_url(None, None) == "https://sms.example.com/Prod"
    assert resolve_api_url(" https://sms.example.com/ ", None) == "https://sms.example.com"


def test_review_a_token_s_surrounding_spaces_and_line_ends_are_not_part_of_it(
    no_local_stack: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from functools import partial

    from sms_gateway_tools import cli

    # Given a gateway, and the token set from a file saved with Windows line ends (or pasted with a space)
    authorizations: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        authorizations.append(request.headers["Authorization"])
        return httpx.Response(200, json={"status_code": 200, "reference_id": "7", "data": [], "next": None})

    mocked = partial(GatewayClient, transport=httpx.MockTransport(handler))
    monkeypatch.setattr(client_commands, "GatewayClient", mocked)
    monkeypatch.setenv(client_commands.TOKEN_VARIABLE, "sk_abc\r\n")
    # When a command runs (an HTTP header cannot carry the line end: the request failed before it left)
    code = cli.main(["status", "386172872980037029", "--api-url", "http://gw", "--json"])
    # Then the token is sent without it
    assert code == 0, capsys.readouterr().err
    assert set(authorizations) == {"Bearer sk_abc"}
    assert resolve_token(" sk_abc ") == "sk_abc"


def test_review_a_token_with_a_character_no_token_has_is_refused_without_echoing_it(
    no_local_stack: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sms_gateway_tools import cli

    # Given a token copied out of a document that made a character of it typographic (a curly quote, a long dash)
    token = "sk_abc\u2019def"
    # When a command runs with it
    code = cli.main(["status", "386172872980037029", "--api-url", "http://127.0.0.1:9", "--token", token])
    err = capsys.readouterr().err
    # Then it is refused before any request, exit 2, saying what is wrong with it, without printing the token
    assert code == client_commands.CANNOT_RUN, err
    assert err.startswith("error: ") and "--token" in err and token not in err, err


@pytest.mark.parametrize("status", [301, 308])
def test_review_an_api_url_the_gateway_redirects_says_where_to(
    status: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sms_gateway_tools import cli

    # Given a gateway behind a proxy that redirects http:// to https://, and the API URL written with http://
    def handler(request: httpx.Request) -> httpx.Response:
        location = str(request.url.copy_with(scheme="https"))
        return httpx.Response(status, headers={"Location": location, "Content-Type": "text/html"}, text="Moved")

    monkeypatch.setattr(
        client_commands,
        "_open_client",
        lambda args: GatewayClient("http://sms.example.com", "t", transport=httpx.MockTransport(handler)),
    )
    # When a message is sent
    code = cli.main(["send", "--from", "48974", "--to", "2348020000000", "--message", "Hi"])
    err = capsys.readouterr().err
    # Then it says the URL redirects, and to which API URL, instead of that it is not the gateway's (exit 2)
    assert code == client_commands.CANNOT_RUN, err
    assert "redirect" in err and "--api-url https://sms.example.com " in err, err


@pytest.mark.parametrize("content", ["to,name\n", "to,name\r\n,\r\n\r\n , \r\n"], ids=["header-only", "blank-rows"])
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["send", "dry-run"])
def test_review_a_csv_with_no_rows_says_there_is_nothing_to_send_and_exits_2(
    content: str, dry_run: list[str], csv_gateways: CsvGateways, capsys: pytest.CaptureFixture[str]
) -> None:
    from sms_gateway_tools import cli

    sends, csv_file, _ = csv_gateways
    # Given the wrong sheet exported: a header line and no rows (or rows left empty)
    csv_file.write_text(content)
    # When it is sent
    argv = ["send", "--csv", str(csv_file), "--from", "48974", "--message", "Hi {name}", *dry_run]
    code = cli.main([*argv, "--api-url", "http://gw", "--token", "t"])
    err = capsys.readouterr().err
    # Then it says there is nothing to send, naming the file, and exits 2 (not 0: a script would read it as sent)
    assert (code, sends) == (client_commands.CANNOT_RUN, {}), err
    assert "no rows" in err and str(csv_file) in err, err


@pytest.mark.parametrize(
    ("header", "column"),
    [("to,name,to", "to"), ("to,name, name ", "name"), ("Phone,name,phone", "phone")],
    ids=["number-twice", "placeholder-twice", "number-twice-other-case"],
)
def test_review_a_csv_with_a_column_twice_is_refused_naming_it_before_anything_is_sent(
    header: str, column: str, csv_gateways: CsvGateways, capsys: pytest.CaptureFixture[str]
) -> None:
    sends, csv_file, send_csv = csv_gateways
    # Given a sheet with a column twice (pasted in twice, or a second list's numbers next to the first's)
    csv_file.write_text(f"{header}\n2348020000000,Ada,2348030000000\n")
    # When it is sent
    code = send_csv("http://gw", "t")
    err = capsys.readouterr().err
    # Then nothing is sent to whichever number or name came last: the column is named, and the run exits 2
    assert (code, sends) == (client_commands.CANNOT_RUN, {}), err
    assert err.startswith("error: ") and f"{column!r}" in err.lower() and "twice" in err, err


@pytest.mark.parametrize(
    ("csv", "dry_run", "field"),
    [(False, [], "reference_id"), (True, [], "reference_id"), (False, ["--dry-run"], "would_be_accepted")],
    ids=["send", "send-csv", "dry-run"],
)
def test_review_a_send_answered_without_a_reference_id_says_the_url_is_not_the_gateway_s(
    csv: bool,
    dry_run: list[str],
    field: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sms_gateway_tools import cli

    # Given an API URL where another JSON API answers every request 200 {"ok": true}
    posts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(request.method)
        return httpx.Response(200, json={"ok": True})

    url = "https://api.example.com"
    monkeypatch.setattr(
        client_commands, "_open_client", lambda args: GatewayClient(url, "t", transport=httpx.MockTransport(handler))
    )
    csv_file = tmp_path / "customers.csv"
    csv_file.write_text("to,name\n" + "".join(f"2348020{n:06d},Ada\n" for n in range(5)))
    how = ["--csv", str(csv_file), "--concurrency", "1"] if csv else ["--to", "2348020000000"]
    # When a message (or a campaign) is sent there
    code = cli.main(["send", "--from", "48974", "--message", "Hi {name}" if csv else "Hi", *how, *dry_run])
    printed = capsys.readouterr()
    # Then it says the answer is not the gateway's and exits 2 (no traceback; no row "rejected: unexpected error"),
    # the campaign stopping at its first answer
    assert code == client_commands.CANNOT_RUN, printed.err
    assert field in printed.err and "API URL" in printed.err, printed.err
    assert "unexpected error" not in printed.out + printed.err
    assert posts.count("POST") == 1

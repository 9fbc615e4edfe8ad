"""The local stack's HTTP plumbing: a caller that hangs up before its answer is not an error to print."""

from __future__ import annotations

import socket
import struct
import threading

import httpx

from sms_gateway_tools.localstack.httpserver import RequestHandler, ServerThread, TrackingHTTPServer


class SlowAnswer(RequestHandler):
    answered = threading.Event()
    release = threading.Event()

    def do_POST(self) -> None:
        self.read_body()
        self.release.wait(5)
        try:
            self.send(200, b"x" * 65536)
            self.send(200, b"x" * 65536)  # the second write meets the reset
        finally:
            self.answered.set()


def test_a_caller_that_hung_up_is_one_quiet_line_and_the_server_goes_on(capfd):
    server = ServerThread(TrackingHTTPServer(("127.0.0.1", 0), SlowAnswer), "slow")
    server.start()
    try:
        # Given a caller that sends a request and closes its socket with a reset before the answer (a client timeout)
        caller = socket.create_connection(("127.0.0.1", server.server.port))
        caller.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        caller.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        caller.close()
        SlowAnswer.release.set()
        assert SlowAnswer.answered.wait(5)
        # Then the next caller is answered, and nothing was printed about the first
        assert httpx.post(f"http://127.0.0.1:{server.server.port}/", content=b"{}", timeout=5).status_code == 200
    finally:
        server.stop()
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err and "Broken pipe" not in captured.err, captured.err

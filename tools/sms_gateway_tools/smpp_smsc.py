"""A minimal SMPP 3.4 SMSC for running a real Kannel against (tools/sms_gateway_tools/kannel_check.py).

It takes one bind (transceiver, or transmitter and receiver) from Kannel's `smsc = smpp`, answers `enquire_link`,
answers every `submit_sm` with a message id (or the command status its plan says), and later sends the delivery
receipts its plan gives for it, as an SMSC does: a `deliver_sm` with `esm_class` 0x04 whose short message is the
SMPP 3.4 appendix B receipt text (`id:… sub:001 dlvrd:… submit date:… done date:… stat:… err:… text:…`). It also
sends MO SMS (`deliver_sm`) with any data coding and user data header.

Not a complete SMSC: no throttling, windows, or TLVs beyond what Kannel needs; one connection at a time per bind.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

BIND_RECEIVER, BIND_TRANSMITTER, BIND_TRANSCEIVER = 0x01, 0x02, 0x09
SUBMIT_SM, DELIVER_SM, UNBIND, ENQUIRE_LINK = 0x04, 0x05, 0x06, 0x15
GENERIC_NACK = 0x80000000
RESPONSE = 0x80000000
ESM_CLASS_RECEIPT, ESM_CLASS_UDHI = 0x04, 0x40


@dataclass(frozen=True)
class Receipt:
    """One delivery receipt the SMSC sends for a submitted part: its `stat:` word and `err:` code."""

    stat: str
    err: str = "000"


@dataclass(frozen=True)
class Outcome:
    """What the SMSC does with one `submit_sm`: refuse it with a command status, or take it and send receipts."""

    command_status: int = 0
    receipts: tuple[Receipt, ...] = (Receipt("DELIVRD"),)


@dataclass
class Submitted:
    """A `submit_sm` as the SMSC got it."""

    message_id: str
    source: str
    destination: str
    esm_class: int
    data_coding: int
    registered_delivery: int
    short_message: bytes
    validity_period: str
    command_status: int

    @property
    def udh(self) -> bytes:
        return self.short_message[: self.short_message[0] + 1] if self.esm_class & ESM_CLASS_UDHI else b""

    @property
    def payload(self) -> bytes:
        return self.short_message[len(self.udh) :]


def _cstring(data: bytes, at: int) -> tuple[str, int]:
    end = data.index(b"\x00", at)
    return data[at:end].decode("latin-1"), end + 1


def _pdu(command_id: int, status: int, sequence: int, body: bytes = b"") -> bytes:
    return struct.pack(">IIII", 16 + len(body), command_id, status, sequence) + body


def _c(value: str) -> bytes:
    return value.encode("latin-1") + b"\x00"


@dataclass
class SmppSmsc:
    """Listens on 127.0.0.1:`port` (0 picks a free one). `plan` decides each submit's outcome, in order received."""

    plan: Callable[[Submitted], Outcome] = lambda _submitted: Outcome()
    receipt_delay: float = 0.2
    port: int = 0
    submitted: list[Submitted] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(7_000_001))
    _sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _senders: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> SmppSmsc:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self.port = int(self._listener.getsockname()[1])
        self._listener.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        for connection in list(self._senders):
            with contextlib.suppress(OSError):
                connection.close()

    @property
    def bound(self) -> bool:
        return bool(self._senders)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _send(self, connection: socket.socket, pdu: bytes) -> None:
        with self._lock:
            connection.sendall(pdu)

    def _serve(self, connection: socket.socket) -> None:
        reader = connection.makefile("rb")
        try:
            while not self._stopping.is_set():
                header = reader.read(16)
                if len(header) < 16:
                    return
                length, command_id, _status, sequence = struct.unpack(">IIII", header)
                body = reader.read(length - 16)
                self._handle(connection, command_id, sequence, body)
        except OSError:
            return
        finally:
            if connection in self._senders:
                self._senders.remove(connection)
            with contextlib.suppress(OSError):
                connection.close()

    def _handle(self, connection: socket.socket, command_id: int, sequence: int, body: bytes) -> None:
        if command_id in (BIND_RECEIVER, BIND_TRANSMITTER, BIND_TRANSCEIVER):
            self._send(connection, _pdu(command_id | RESPONSE, 0, sequence, _c("smsc")))
            if command_id != BIND_TRANSMITTER:
                self._senders.append(connection)
        elif command_id == ENQUIRE_LINK:
            self._send(connection, _pdu(ENQUIRE_LINK | RESPONSE, 0, sequence))
        elif command_id == UNBIND:
            self._send(connection, _pdu(UNBIND | RESPONSE, 0, sequence))
        elif command_id == SUBMIT_SM:
            self._submit(connection, sequence, body)
        elif command_id & RESPONSE:
            return  # deliver_sm_resp and the like
        else:
            self._send(connection, _pdu(GENERIC_NACK, 0x03, sequence))  # ESME_RINVCMDID

    def _submit(self, connection: socket.socket, sequence: int, body: bytes) -> None:
        _service_type, at = _cstring(body, 0)
        at += 2
        source, at = _cstring(body, at)
        at += 2
        destination, at = _cstring(body, at)
        esm_class = body[at]
        at += 3
        _schedule, at = _cstring(body, at)
        validity, at = _cstring(body, at)
        registered_delivery, data_coding, length = body[at], body[at + 2], body[at + 4]
        short_message = body[at + 5 : at + 5 + length]
        submitted = Submitted(
            message_id=str(next(self._ids)),
            source=source,
            destination=destination,
            esm_class=esm_class,
            data_coding=data_coding,
            registered_delivery=registered_delivery,
            short_message=short_message,
            validity_period=validity,
            command_status=0,
        )
        outcome = self.plan(submitted)
        submitted.command_status = outcome.command_status
        self.submitted.append(submitted)
        if outcome.command_status:
            self._send(connection, _pdu(SUBMIT_SM | RESPONSE, outcome.command_status, sequence))
            return
        self._send(connection, _pdu(SUBMIT_SM | RESPONSE, 0, sequence, _c(submitted.message_id)))
        if registered_delivery & 0x03:
            threading.Thread(target=self._receipts, args=(submitted, outcome.receipts), daemon=True).start()

    def _receipts(self, submitted: Submitted, receipts: tuple[Receipt, ...]) -> None:
        for receipt in receipts:
            time.sleep(self.receipt_delay)
            now = datetime.now(UTC).strftime("%y%m%d%H%M")
            text = (
                f"id:{submitted.message_id} sub:001 dlvrd:{'001' if receipt.stat == 'DELIVRD' else '000'} "
                f"submit date:{now} done date:{now} stat:{receipt.stat} err:{receipt.err} text:"
            ).encode("latin-1") + submitted.payload[:20]
            self.deliver(
                source=submitted.destination,
                destination=submitted.source,
                short_message=text,
                esm_class=ESM_CLASS_RECEIPT,
            )

    def deliver(
        self, *, source: str, destination: str, short_message: bytes, esm_class: int = 0, data_coding: int = 0
    ) -> None:
        """A `deliver_sm` to the bound receiver: an MO, or (`esm_class` 0x04) a receipt."""
        if len(short_message) > 254:
            raise ValueError("short_message over 254 octets")
        body = (
            _c("")
            + bytes([1, 1])
            + _c(source)
            + bytes([1, 1])
            + _c(destination)
            + bytes([esm_class, 0, 0])
            + _c("")
            + _c("")
            + bytes([0, 0, data_coding, 0, len(short_message)])
            + short_message
        )
        for connection in list(self._senders):
            self._send(connection, _pdu(DELIVER_SM, 0, next(self._sequence), body))
            return
        raise RuntimeError("no receiver bound")

"""The add-on's side of the wire: a ZeroMQ DEALER talking to one worker (docs/protocol.md).

bpy-free, and pyzmq is imported inside the functions so that this module imports without it.
Liveness is Paranoid Pirate style: while waiting for a job the client sends a HEARTBEAT every
``heartbeat_s`` and gives up with ``WorkerUnavailable`` when nothing (message or heartbeat) has
come from the worker for ``liveness_s``.

Results are checked before anyone decodes them: the socket drops frames over the protocol's frame
limit unread (ZMQ_MAXMSGSIZE), messages of too many frames are read without being kept
(``Receiver``), and ``events`` refuses a RESULT whose video PNGs do not declare,
in their headers, the submitted views x frames at the templates' size.

A remote worker or broker speaks CurveZMQ: pass ``server_public_key`` (its ``NAME.key`` file, or
the 40-character Z85 key) and ``client_secret_file`` (this user's ``NAME.key_secret``, whose
public half is in the server's allow-list). A wrong key looks like a silent server, so it ends
in ``WorkerUnavailable`` after ``timeout_s``; the message says to check the keys.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from typing import Iterator

import numpy as np

from .protocol import (
    ErrorCode, Limits, Message, MessageType, ProtocolError, Receiver, blob_array, blob_png, encode, png_size,
)
from .request import Request

CLIENT_VERSION = "0.1.0"
DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"  # a local worker (or broker) on its default port
_FINAL = (MessageType.RESULT, MessageType.ERROR, MessageType.CANCELLED)


class WorkerUnavailable(RuntimeError):
    """No worker answered; the text is a sentence for the user."""


class Client:
    def __init__(self, address: str, timeout_s: float = 5.0, heartbeat_s: float = 1.0,
                 liveness_s: float | None = None, *, server_public_key: str | os.PathLike | bytes | None = None,
                 client_secret_file: str | os.PathLike | None = None):
        if (server_public_key is None) != (client_secret_file is None):
            raise ValueError("CurveZMQ needs both the server's public key and this client's secret key file")
        self._curve = None if server_public_key is None else curve_keys(server_public_key, client_secret_file)
        self.address = address
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s
        self.liveness_s = timeout_s if liveness_s is None else liveness_s
        self._socket = None
        self._receiver: Receiver | None = None
        self._inbox: dict[str | None, deque[Message]] = {}
        self._expected: dict[str, tuple[int, int, int, int]] = {}  # job: (views, frames, width, height)
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}{id(self) & 0xFFFFFF:x}"

    # --- socket ----------------------------------------------------------------------------------
    def _sock(self):
        if self._socket is None:
            import zmq

            self._socket = zmq.Context.instance().socket(zmq.DEALER)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.MAXMSGSIZE, Limits().max_part_bytes)
            if self._curve is not None:
                self._socket.curve_serverkey, self._socket.curve_publickey, self._socket.curve_secretkey = self._curve
            self._socket.connect(self.address)
            self._receiver = Receiver(self._socket)
        return self._socket

    def _reset(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None

    def close(self) -> None:
        self._reset()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, message: Message) -> None:
        import zmq

        try:
            self._sock().send_multipart(encode(message), zmq.NOBLOCK)
        except zmq.Again:  # no connection: a failed handshake (wrong keys) ends it; the wait for an answer says so
            pass

    def _recv(self, timeout_s: float) -> Message | None:
        """One decoded message, or None when nothing came within ``timeout_s``."""
        sock = self._sock()
        if not sock.poll(max(0, int(timeout_s * 1000))):
            return None
        received = self._receiver.receive(budget=None)  # to the message's end: ZeroMQ delivers it whole
        if received is None:
            return None
        if isinstance(received[1], ProtocolError):
            raise received[1]
        return received[1]

    def _unavailable(self, what: str) -> WorkerUnavailable:
        self._reset()  # Paranoid Pirate: a fresh socket next time, nothing stale queued in it
        keys = " and that its CurveZMQ keys match yours" if self._curve is not None else ""
        return WorkerUnavailable(f"The AnimaX worker at {self.address} {what}; check that it is running "
                                 f"(animax-worker) and that the address is right{keys}.")

    # --- requests --------------------------------------------------------------------------------
    def hello(self) -> dict:
        self._send(Message(MessageType.HELLO, None, {"client": "animax-blender", "version": CLIENT_VERSION}))
        deadline = time.monotonic() + self.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            message = self._recv(left)
            if message is None:
                break
            if message.type == MessageType.WELCOME:
                return dict(message.body)
            if message.type == MessageType.ERROR and message.job is None:
                raise ProtocolError(ErrorCode(message.body["code"]), message.body["message"])
            self._inbox.setdefault(message.job, deque()).append(message)
        raise self._unavailable(f"did not answer within {self.timeout_s:g} s")

    def submit(self, request: Request, job: str | None = None) -> str:
        """Send a job; returns its id. Follow it with ``events(job)``."""
        job = job or f"{self._prefix}-{next(self._ids)}"
        self._send(request.to_message(job))
        width, height = png_size(request.templates[0])
        options = request.options
        self._expected[job] = (options.variations, len(request.templates), options.frames, width, height)
        return job

    def cancel(self, job: str) -> None:
        self._send(Message(MessageType.CANCEL, job))

    def events(self, job: str) -> Iterator[Message]:
        """ACCEPTED, PROGRESS, then RESULT, ERROR or CANCELLED for ``job`` (ends after that one).

        Errors without a job id (a malformed request) are yielded too and end the stream. A RESULT
        whose videos are not what was submitted raises ``ProtocolError`` instead.
        """
        last_heard = time.monotonic()
        next_beat = last_heard + self.heartbeat_s
        while True:
            for key in (job, None):
                pending = self._inbox.get(key)
                if pending:
                    message = pending.popleft()
                    if message.type in _FINAL and key is not None:
                        expected = self._expected.pop(key, None)
                        if message.type == MessageType.RESULT and expected is not None:
                            _check_videos(message, *expected)
                    yield message
                    if message.type in _FINAL:
                        return
                    break
            else:
                now = time.monotonic()
                if now >= next_beat:
                    self._send(Message(MessageType.HEARTBEAT))
                    next_beat = now + self.heartbeat_s
                wait = min(next_beat, last_heard + self.liveness_s) - now
                message = self._recv(wait)
                if message is not None:
                    last_heard = time.monotonic()
                    if message.type not in (MessageType.HEARTBEAT, MessageType.WELCOME):
                        self._inbox.setdefault(message.job, deque()).append(message)
                elif time.monotonic() - last_heard > self.liveness_s:
                    raise self._unavailable(f"stopped answering for {self.liveness_s:g} s")


def curve_keys(server_public_key: str | os.PathLike | bytes, client_secret_file) -> tuple[bytes, bytes, bytes]:
    """(server public, client public, client secret) as Z85 bytes, read from the key files."""
    from zmq.auth import load_certificate

    if not isinstance(server_public_key, bytes) and os.path.isfile(server_public_key):  # a NAME.key file
        try:
            key = load_certificate(os.fspath(server_public_key))[0]
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the server's public key file {server_public_key} ({exc})") from exc
    else:
        key = server_public_key if isinstance(server_public_key, bytes) else os.fspath(server_public_key).encode()
        if len(key) != 40:
            raise ValueError(f"the server's public key must be its NAME.key file or its 40-character Z85 key, "
                             f"got {server_public_key!r}")
    try:
        public, secret = load_certificate(os.fspath(client_secret_file))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the client key file {client_secret_file} ({exc})") from exc
    if secret is None:
        raise ValueError(f"{client_secret_file} holds only a public key; pass your NAME.key_secret file")
    return key, public, secret


def _check_videos(message: Message, variations: int, views: int, frames: int, width: int, height: int) -> None:
    """Refuse a RESULT unless it has ``variations`` and each video is ``variations`` x ``views`` x
    ``frames`` PNGs that declare ``width`` x ``height``, read from their headers: a small PNG can
    declare gigapixels, which Blender would pay for."""
    if message.body["variations"] != variations:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"The worker sent {message.body['variations']} variations for "
                            f"{variations}; install matching add-on and worker releases.")
    for name, indices in message.body["videos"].items():
        if len(indices) != variations * views * frames:
            several = f"{variations} variations x " if variations > 1 else ""
            raise ProtocolError(ErrorCode.BAD_FIELD, f"The worker sent {len(indices)} '{name}' frames for "
                                f"{several}{views} views x {frames} frames; install matching add-on and worker "
                                "releases.")
        for i in indices:
            w, h = png_size(message.blobs[i])
            if (w, h) != (width, height):
                code = ErrorCode.TOO_LARGE if w * h > width * height else ErrorCode.BAD_FIELD
                raise ProtocolError(code, f"The worker sent a '{name}' frame of {w}x{h} pixels for templates of "
                                    f"{width}x{height}; it was not decoded.")


def result_arrays(message: Message) -> list[dict[str, np.ndarray]]:
    """A RESULT's variations, each its arrays by name, plus each video as ``<name>_video``
    (V, T, H, W, 3) uint8."""
    body = message.body
    count, views = body["variations"], body["diagnostics"].get("views", 1)
    out = {name: blob_array(spec, message.blobs[spec["blob"]]) for name, spec in body["arrays"].items()}
    for name, indices in body["videos"].items():
        frames = np.stack([blob_png(message.blobs[i]) for i in indices])
        out[f"{name}_video"] = frames.reshape(count, views, len(indices) // (count * views), *frames.shape[1:])
    return [{name: values[i] for name, values in out.items()} for i in range(count)]

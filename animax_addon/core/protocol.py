"""The versioned wire format between the Blender add-on (DEALER) and the worker (ROUTER).

A message is a list of byte frames. Frame 0 is a UTF-8 JSON header::

    {"v": 2, "type": "submit", "job": "a1", "body": {...}, "blobs": 2}

and frames 1..n are binary payloads ("blobs"): PNG images, or raw little-endian numpy arrays.
The body refers to a blob by its index ``i`` into ``Message.blobs`` (wire frame ``i + 1``); every
blob is referenced exactly once, and ``"blobs"`` must equal the number of frames that follow the
header. ROUTER identity and delimiter frames belong to the socket layer and never reach here.

``decode`` checks the frame count and sizes against ``Limits`` before it parses any JSON, then the
version, the type, the job id and the type's body schema, and raises ``ProtocolError`` (a code and
a human sentence) for anything else. It never decodes images or arrays: ``blob_png`` and
``blob_array`` do that, with their own size checks, when the receiver needs the pixels or values.
``encode`` runs the same checks, so a sender cannot build a message its peer would refuse.
``Receiver`` reads a socket's messages one frame at a time and refuses those with too many
frames or bytes without keeping them.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import zlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from PIL import Image

from .rig import MAX_JOINTS

PROTOCOL_VERSION = 2

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ARRAY_DTYPES = ("float32", "float64", "int32", "int64", "uint8")
MAX_NDIM = 8
MAX_PROMPT_CHARS = 1000
MAX_TEXT_CHARS = 256  # names, versions, stages
MAX_ERROR_CHARS = 4000
MAX_STEPS = 200
MAX_VIDEO_FRAMES = 161
MAX_FPS = 1000.0  # the scene frame rate keys are resampled to: each frame costs memory and time
MAX_VARIATIONS = 8  # seeds of one job, run as one batch; a worker's preset may allow fewer (job_limits)
OUTPUTS = ("pose", "rgb")
# The loaded model's generation defaults, sent in welcome (and ready): per-view image size,
# frames, denoising steps, image-guidance scale, the frame rate the model generates at and the
# most joints it tells apart.
PRESET_KEYS = ("name", "size", "frames", "steps", "guidance", "fps", "joints")
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class MessageType(str, Enum):
    HELLO = "hello"
    WELCOME = "welcome"
    SUBMIT = "submit"
    ACCEPTED = "accepted"
    PROGRESS = "progress"
    RESULT = "result"
    ERROR = "error"
    CANCEL = "cancel"
    CANCELLED = "cancelled"
    HEARTBEAT = "heartbeat"
    READY = "ready"  # worker -> broker only: "I am connected and idle", body as welcome's


class ErrorCode(str, Enum):
    BAD_FRAME = "bad_frame"
    TOO_LARGE = "too_large"
    BAD_JSON = "bad_json"
    BAD_VERSION = "bad_version"
    UNKNOWN_TYPE = "unknown_type"
    BAD_FIELD = "bad_field"
    UNEXPECTED = "unexpected"
    QUEUE_FULL = "queue_full"
    BUSY = "busy"
    CANCELLED = "cancelled"
    OUT_OF_MEMORY = "out_of_memory"
    MODEL_UNAVAILABLE = "model_unavailable"
    INTERNAL = "internal"
    WORKER_LOST = "worker_lost"

    @property
    def sentence(self) -> str:
        """A generic human sentence for this code: what happened and what to do."""
        return _ERROR_SENTENCES[self]


_ERROR_SENTENCES = {
    ErrorCode.BAD_FRAME: (
        "The message frames are malformed; update the add-on "
        "and the worker to the same release."
    ),
    ErrorCode.TOO_LARGE: (
        "The message is larger than the configured limits; "
        "use fewer frames or a smaller size."
    ),
    ErrorCode.BAD_JSON: (
        "The message header is not valid JSON; update the "
        "add-on and the worker to the same release."
    ),
    ErrorCode.BAD_VERSION: (
        "The add-on and the worker speak different protocol "
        "versions; install matching releases."
    ),
    ErrorCode.UNKNOWN_TYPE: "The message type is unknown; install matching add-on and worker releases.",
    ErrorCode.BAD_FIELD: "A message field is missing or invalid; check the settings and try again.",
    ErrorCode.UNEXPECTED: (
        "The message came at the wrong time (for example a "
        "cancel for an unknown job); try again."
    ),
    ErrorCode.QUEUE_FULL: "The worker's queue is full; wait for a job to finish and submit again.",
    ErrorCode.BUSY: "The worker is busy; try again in a moment.",
    ErrorCode.CANCELLED: "The job was cancelled.",
    ErrorCode.OUT_OF_MEMORY: "The worker ran out of GPU memory; use a smaller preset or fewer frames.",
    ErrorCode.MODEL_UNAVAILABLE: (
        "The worker has no usable model loaded; check "
        "the worker's model path and log."
    ),
    ErrorCode.INTERNAL: "The worker failed unexpectedly; see the worker log for details.",
    ErrorCode.WORKER_LOST: (
        "The worker running the job stopped answering and no other worker could finish it; "
        "submit the job again and check the workers' logs."
    ),
}


class ProtocolError(ValueError):
    """A message that cannot be accepted: ``code`` for machines, the text for people."""

    def __init__(self, code: ErrorCode, sentence: str) -> None:
        super().__init__(sentence)
        self.code = code
        self.sentence = sentence


@dataclass(frozen=True)
class Limits:
    max_frames: int = 1024
    max_header_bytes: int = 64 * 1024
    max_frame_bytes: int = 16 * 1024 * 1024
    max_total_bytes: int = 256 * 1024 * 1024
    max_pixels: int = 4096 * 4096  # per PNG, checked from its header before decoding

    @property
    def max_part_bytes(self) -> int:
        """The largest frame of any kind: a socket's ZMQ_MAXMSGSIZE, so libzmq drops bigger ones unread."""
        return max(self.max_header_bytes, self.max_frame_bytes)


@dataclass(frozen=True)
class Message:
    type: MessageType
    job: str | None = None
    body: dict[str, Any] = field(default_factory=dict)
    blobs: tuple[bytes, ...] = ()


def error_message(code: ErrorCode | str, sentence: str, job: str | None = None) -> Message:
    return Message(MessageType.ERROR, job, {"code": ErrorCode(code).value, "message": sentence})


# --- framing -------------------------------------------------------------------------------------


def encode(message: Message, limits: Limits = Limits()) -> list[bytes]:
    """Check ``message`` as ``decode`` would and return its frames."""
    if not isinstance(message.type, str) or message.type not in _TYPE_VALUES:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"Unknown message type {_show(message.type)}.")
    kind = MessageType(message.type)
    blobs = tuple(message.blobs)
    for i, blob in enumerate(blobs):
        if not isinstance(blob, bytes):
            raise ProtocolError(ErrorCode.BAD_FRAME, f"Blob {i} is {type(blob).__name__}, not bytes.")
    _check_message(kind, message.job, message.body, blobs)
    header = {"v": PROTOCOL_VERSION, "type": kind.value, "job": message.job, "body": message.body,
              "blobs": len(blobs)}
    try:
        # ASCII output: lone surrogates and any other str survive the round trip.
        text = json.dumps(header, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"The body is not plain JSON ({exc}).") from exc
    frames = [text.encode("ascii"), *blobs]
    _check_frames(frames, limits)
    return frames


def decode(frames: list[bytes], limits: Limits = Limits()) -> Message:
    """Parse and check a received frame list; raise ``ProtocolError`` for anything invalid."""
    frames = _check_frames(frames, limits)  # before any parsing: a hostile peer costs little
    try:
        header = json.loads(frames[0].decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise ProtocolError(ErrorCode.BAD_JSON, f"The message header is not valid JSON: {exc}.") from exc
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, "The message header must be a JSON object.")
    # The version first: a newer peer's message may not fit the rest of this schema.
    version = header.get("v")
    if not _is_int(version) or version != PROTOCOL_VERSION:
        raise ProtocolError(ErrorCode.BAD_VERSION,
                            f"The peer speaks protocol version {_show(version)}, this side speaks "
                            f"{PROTOCOL_VERSION}; install matching add-on and worker releases.")
    _expect_keys(header, "header", ("v", "type", "job", "body", "blobs"))
    kind = header["type"]
    if not isinstance(kind, str) or kind not in _TYPE_VALUES:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"Unknown message type {_show(kind)}; "
                            "install matching add-on and worker releases.")
    count = header["blobs"]
    if not _is_int(count) or count != len(frames) - 1:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"The header announces {_show(count)} blobs but "
                            f"{len(frames) - 1} frames follow it.")
    blobs = tuple(frames[1:])
    _check_message(MessageType(kind), header["job"], header["body"], blobs)
    return Message(MessageType(kind), header["job"], header["body"], blobs)


def _check_frames(frames: Any, limits: Limits) -> list[bytes]:
    if not isinstance(frames, (list, tuple)) or not frames:
        raise ProtocolError(ErrorCode.BAD_FRAME, "A message must be a non-empty list of byte frames.")
    if len(frames) > limits.max_frames:
        raise _too_many_frames(len(frames), limits)
    total = 0
    for i, frame in enumerate(frames):
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            raise ProtocolError(ErrorCode.BAD_FRAME, f"Frame {i} is {type(frame).__name__}, not bytes.")
        size = memoryview(frame).nbytes
        limit = limits.max_header_bytes if i == 0 else limits.max_frame_bytes
        if size > limit:
            what = "The header" if i == 0 else f"Frame {i}"
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{what} has {size} bytes, more than the limit of "
                                f"{limit}; use a smaller rig, image size or frame count.")
        total += size
    if total > limits.max_total_bytes:
        raise _too_many_bytes(total, limits)
    return [bytes(frame) for frame in frames]


def _too_many_frames(count: int, limits: Limits) -> ProtocolError:
    return ProtocolError(ErrorCode.TOO_LARGE, f"The message has {count} frames, more than the limit of "
                         f"{limits.max_frames}; send fewer frames or views.")


def _too_many_bytes(total: int, limits: Limits) -> ProtocolError:
    return ProtocolError(ErrorCode.TOO_LARGE, f"The message has {total} bytes, more than the limit of "
                         f"{limits.max_total_bytes}; use a smaller image size or frame count.")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


class Receiver:
    """The messages arriving on one pyzmq socket, read one frame at a time.

    libzmq bounds a frame's size (ZMQ_MAXMSGSIZE) but not a message's frame count, and reading a
    message of a million empty frames takes about a second however it is done. So frames past
    ``limits.max_frames`` or ``limits.max_total_bytes`` are read and dropped, never kept, and
    ``receive`` reads at most ``budget`` frames a call: a long message takes many calls, and the
    caller's loop (heartbeats, replies to others) runs between them. ``route`` is the number of
    frames the socket puts before the message (1: a ROUTER's peer identity). ``user_id`` is the
    User-Id of the message ``receive`` returned last: what the socket's ZAP handler answered for
    its sender (a CurveZMQ peer's public key, Z85), or None without one.
    """

    def __init__(self, socket, limits: Limits = Limits(), route: int = 0) -> None:
        self.socket, self.limits, self.route = socket, limits, route
        self._frames: list[bytes] = []  # of the message being read, while within the limits
        self._count = self._bytes = 0
        self.user_id: str | None = None

    @property
    def reading(self) -> bool:
        """Whether a message has been read in part: until it ends, the messages of every other
        peer wait behind it, so their silence says nothing about them."""
        return self._count > 0

    def receive(self, budget: int | None = 4096) -> tuple[list[bytes], Message | ProtocolError] | None:
        """The next message as (its ``route`` frames, the decoded message or the ``ProtocolError``
        that refuses it); None when none is waiting, or when ``budget`` frames were read and the
        message goes on (``None``: read it to its end). The default budget holds any message
        within the default limits."""
        import zmq  # only here: the module imports without pyzmq

        keep_frames = self.route + self.limits.max_frames
        read = 0
        while budget is None or read < budget:
            try:
                frame = self.socket.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return None
            read += 1
            self._count += 1
            if self._count > self.route:
                self._bytes += len(frame)
            if self._count <= keep_frames and self._bytes <= self.limits.max_total_bytes:
                self._frames.append(frame.bytes)
            else:
                del self._frames[self.route:]  # refused whatever follows: free what was kept
            if not frame.more:
                self.user_id = _user_id(frame, zmq)
                return self._finish()
        return None

    def _finish(self) -> tuple[list[bytes], Message | ProtocolError]:
        route, frames = self._frames[:self.route], self._frames[self.route:]
        count, total = self._count - self.route, self._bytes
        self._frames, self._count, self._bytes = [], 0, 0
        if count > self.limits.max_frames:
            return route, _too_many_frames(count, self.limits)
        if total > self.limits.max_total_bytes:
            return route, _too_many_bytes(total, self.limits)
        try:
            return route, decode(frames, self.limits)
        except ProtocolError as exc:
            return route, exc


def _user_id(frame, zmq) -> str | None:
    # A routing id names a connection only: a peer that connects with another's once that one has
    # gone gets its replies. The key the handshake proved is what says who sent a message.
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:  # no ZAP handler answered for this connection
        return None


# --- body schemas ----------------------------------------------------------------------------------

_TYPE_VALUES = frozenset(t.value for t in MessageType)
_NEEDS_JOB = frozenset({MessageType.SUBMIT, MessageType.ACCEPTED, MessageType.PROGRESS,
                        MessageType.RESULT, MessageType.CANCEL, MessageType.CANCELLED})
_NO_JOB = frozenset({MessageType.HELLO, MessageType.WELCOME, MessageType.HEARTBEAT, MessageType.READY})


class _Blobs:
    """Hands out blob references, checking that each blob is referenced exactly once."""

    def __init__(self, blobs: tuple[bytes, ...]) -> None:
        self.blobs = blobs
        self.used: set[int] = set()

    def take(self, value: Any, name: str, png: bool = False) -> int:
        index = _int(value, name, 0, len(self.blobs) - 1) if self.blobs else None
        if index is None:
            raise _bad(name, "refers to a blob but the message has none")
        if index in self.used:
            raise _bad(name, f"refers to blob {index}, which another field already uses")
        if png and not self.blobs[index].startswith(PNG_SIGNATURE):
            raise _bad(name, f"refers to blob {index}, which is not a PNG image")
        self.used.add(index)
        return index

    def check_all_used(self) -> None:
        unused = sorted(set(range(len(self.blobs))) - self.used)
        if unused:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"Blob {unused[0]} is not referenced by the body.")


def _check_message(kind: MessageType, job: Any, body: Any, blobs: tuple[bytes, ...]) -> None:
    if kind in _NEEDS_JOB or job is not None:
        if kind in _NO_JOB:
            raise _bad("job", f"must be null for a {kind.value} message")
        if not isinstance(job, str) or not _JOB_ID.fullmatch(job):
            raise _bad("job", f"must be 1 to 64 characters of A-Z a-z 0-9 _ -, got {_show(job)}")
    if not isinstance(body, dict):
        raise _bad("body", f"must be a JSON object, got {_show(body)}")
    refs = _Blobs(blobs)
    _BODY_CHECKS[kind](body, refs)
    refs.check_all_used()


def _check_hello(body: dict, refs: _Blobs) -> None:
    _expect_keys(body, "hello body", ("client", "version"))
    _text(body["client"], "client")
    _text(body["version"], "version")


def _check_welcome(body: dict, refs: _Blobs) -> None:
    _expect_keys(body, "welcome body", ("worker", "version", "protocol", "model", "preset"))
    _text(body["worker"], "worker")
    _text(body["version"], "version")
    _int(body["protocol"], "protocol", 1)
    _text(body["model"], "model")
    preset = _obj(body["preset"], "preset")
    _expect_keys(preset, "preset", PRESET_KEYS, "preset.")
    _text(preset["name"], "preset.name")
    _int(preset["size"], "preset.size", 1)
    frames = _int(preset["frames"], "preset.frames", 1, MAX_VIDEO_FRAMES)
    if (frames - 1) % 4:
        raise _bad("preset.frames", f"must be 1 + 4k, got {frames}")
    _int(preset["steps"], "preset.steps", 1, MAX_STEPS)
    _number(preset["guidance"], "preset.guidance", 1.0)
    _number(preset["fps"], "preset.fps", 0.0, exclusive=True)
    _int(preset["joints"], "preset.joints", 1, MAX_JOINTS)


def _check_submit(body: dict, refs: _Blobs) -> None:
    _expect_keys(body, "submit body", ("prompt", "rig", "cameras", "options", "templates"))
    prompt = _text(body["prompt"], "prompt", MAX_PROMPT_CHARS)
    if not prompt.strip():
        raise _bad("prompt", "must contain some text")
    _obj(body["rig"], "rig")
    _obj(body["cameras"], "cameras")
    options = _obj(body["options"], "options")
    _expect_keys(options, "options", ("steps", "guidance", "seed", "frames", "fps", "outputs", "variations"),
                 "options.")
    _int(options["steps"], "options.steps", 1, MAX_STEPS)
    _number(options["guidance"], "options.guidance", 1.0)
    _int(options["seed"], "options.seed", 0, 2**63 - 1)  # seed + i of each variation fits a torch generator seed
    frames = _int(options["frames"], "options.frames", 1, MAX_VIDEO_FRAMES)
    if (frames - 1) % 4:  # the video VAE compresses time 4x after the first frame
        raise _bad("options.frames", f"must be 1 + 4k (1, 5, 9, ... {MAX_VIDEO_FRAMES}), got {frames}")
    _number(options["fps"], "options.fps", 0.0, exclusive=True, hi=MAX_FPS)
    outputs = _list(options["outputs"], "options.outputs")
    if not outputs or any(not isinstance(o, str) or o not in OUTPUTS for o in outputs) \
            or len(set(outputs)) != len(outputs):
        raise _bad("options.outputs", f"must be a non-empty list of distinct {OUTPUTS}, got {_show(outputs)}")
    _int(options["variations"], "options.variations", 1, MAX_VARIATIONS)
    templates = _list(body["templates"], "templates")
    if not templates:
        raise _bad("templates", "must list at least one template image")
    for i, index in enumerate(templates):
        refs.take(index, f"templates[{i}]", png=True)


def _check_accepted(body: dict, refs: _Blobs) -> None:
    _expect_keys(body, "accepted body", ("position",))
    _int(body["position"], "position", 0)


def _check_progress(body: dict, refs: _Blobs) -> None:
    _expect_keys(body, "progress body", ("stage", "step", "total", "eta_s"))
    _text(body["stage"], "stage")
    total = _int(body["total"], "total", 0)
    _int(body["step"], "step", 0, total)
    if body["eta_s"] is not None:
        _number(body["eta_s"], "eta_s", 0.0)


def _check_result(body: dict, refs: _Blobs) -> None:
    _expect_keys(body, "result body", ("variations", "arrays", "videos", "diagnostics"))
    variations = _int(body["variations"], "variations", 1, MAX_VARIATIONS)
    for name, spec in _obj(body["arrays"], "arrays").items():
        where = f"arrays.{_text(name, 'arrays key')}"
        spec = _obj(spec, where)
        _expect_keys(spec, where, ("blob", "dtype", "shape"), f"{where}.")
        dtype, shape = _array_layout(spec, where)
        if not shape or shape[0] != variations:
            raise _bad(f"{where}.shape", f"must start with the {variations} variations, got {_show(list(shape))}")
        index = refs.take(spec["blob"], f"{where}.blob")
        expected = math.prod(shape) * dtype.itemsize
        if len(refs.blobs[index]) != expected:
            raise _bad(where, f"declares {expected} bytes ({dtype.name} {shape}) but blob {index} "
                       f"has {len(refs.blobs[index])}")
    for name, indices in _obj(body["videos"], "videos").items():
        where = f"videos.{_text(name, 'videos key')}"
        if not _list(indices, where) or len(indices) % variations:
            raise _bad(where, f"must list the same number of frames, at least one, for each of the {variations} "
                       f"variations, got {len(indices)}")
        for i, index in enumerate(indices):
            refs.take(index, f"{where}[{i}]", png=True)
    _obj(body["diagnostics"], "diagnostics")


def _check_error(body: dict, refs: _Blobs) -> None:
    _expect_keys(body, "error body", ("code", "message"))
    code = body["code"]
    if not isinstance(code, str) or code not in _ERROR_VALUES:
        raise _bad("code", f"must be one of {sorted(_ERROR_VALUES)}, got {_show(code)}")
    _text(body["message"], "message", MAX_ERROR_CHARS)


def _check_empty(body: dict, refs: _Blobs) -> None:
    _expect_keys(body, "body", ())


_ERROR_VALUES = frozenset(c.value for c in ErrorCode)
_BODY_CHECKS = {
    MessageType.HELLO: _check_hello,
    MessageType.WELCOME: _check_welcome,
    MessageType.SUBMIT: _check_submit,
    MessageType.ACCEPTED: _check_accepted,
    MessageType.PROGRESS: _check_progress,
    MessageType.RESULT: _check_result,
    MessageType.ERROR: _check_error,
    MessageType.CANCEL: _check_empty,
    MessageType.CANCELLED: _check_empty,
    MessageType.HEARTBEAT: _check_empty,
    MessageType.READY: _check_welcome,
}


# --- field helpers -----------------------------------------------------------------------------------


def _bad(name: str, problem: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FIELD, f"Field '{name}' {problem}.")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not 1


def _expect_keys(obj: dict, where: str, keys: tuple[str, ...], prefix: str = "") -> None:
    for key in keys:
        if key not in obj:
            raise _bad(prefix + key, f"is missing from the {where}")
    extra = sorted(set(obj) - set(keys), key=str)  # str: a Python caller may use non-str keys
    if extra:
        raise _bad(f"{prefix}{extra[0]}", f"is not a known field of the {where}")


def _int(value: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
    if not _is_int(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f" from {lo}" if lo is not None else ""
        bounds += f" to {hi}" if hi is not None else (" or more" if lo is not None else "")
        raise _bad(name, f"must be an integer{bounds}, got {_show(value)}")
    return value


def _number(value: Any, name: str, lo: float, exclusive: bool = False, hi: float | None = None) -> float:
    ok = (_is_int(value) or isinstance(value, float)) and math.isfinite(value) \
        and (value > lo if exclusive else value >= lo) and (hi is None or value <= hi)
    if not ok:
        bounds = f"{'above' if exclusive else 'of at least'} {lo}" + (f" and at most {hi}" if hi is not None else "")
        raise _bad(name, f"must be a finite number {bounds}, got {_show(value)}")
    return float(value)


def _text(value: Any, name: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(value, str) or not value or len(value) > max_chars:
        raise _bad(name, f"must be a string of 1 to {max_chars} characters, got {_show(value)}")
    try:
        value.encode("utf-8")  # lone surrogates from \ud800 escapes would fail later, downstream
    except UnicodeEncodeError as exc:
        raise _bad(name, "contains an invalid Unicode surrogate") from exc
    return value


def _obj(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise _bad(name, f"must be a JSON object, got {_show(value)}")
    return value


def _list(value: Any, name: str) -> list:
    if not isinstance(value, list):
        raise _bad(name, f"must be a JSON list, got {_show(value)}")
    return value


# --- payloads --------------------------------------------------------------------------------------


def _array_layout(spec: Any, name: str) -> tuple[np.dtype, tuple[int, ...]]:
    spec = _obj(spec, name)
    dtype = spec.get("dtype")
    if not isinstance(dtype, str) or dtype not in ARRAY_DTYPES:
        raise _bad(f"{name}.dtype", f"must be one of {ARRAY_DTYPES}, got {_show(dtype)}")
    shape = spec.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_is_int(n) and n >= 0 for n in shape):
        raise _bad(f"{name}.shape", f"must be a list of at most {MAX_NDIM} non-negative integers, "
                   f"got {_show(shape)}")
    return np.dtype(dtype), tuple(shape)


def array_blob(array: np.ndarray) -> tuple[dict[str, Any], bytes]:
    """Return ``({"dtype", "shape"}, little-endian bytes)``; the caller adds ``"blob": index``."""
    a = np.asarray(array)
    if a.dtype.name not in ARRAY_DTYPES:
        raise _bad("dtype", f"must be one of {ARRAY_DTYPES}, got {a.dtype.name}")
    if a.ndim > MAX_NDIM:
        raise _bad("shape", f"must have at most {MAX_NDIM} dimensions, got {a.ndim}")
    data = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
    return {"dtype": a.dtype.name, "shape": list(a.shape)}, data


def blob_array(spec: dict[str, Any], data: bytes, limits: Limits = Limits()) -> np.ndarray:
    """Rebuild an array from its spec and blob: a writable copy in native byte order."""
    dtype, shape = _array_layout(spec, "array")
    expected = math.prod(shape) * dtype.itemsize
    if expected > limits.max_frame_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"The array {dtype.name} {list(shape)} needs {expected} "
                            f"bytes, more than the limit of {limits.max_frame_bytes}.")
    if len(data) != expected:
        raise _bad("array", f"declares {expected} bytes ({dtype.name} {list(shape)}) but has {len(data)}")
    return np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape).astype(dtype)


def png_blob(image: np.ndarray) -> bytes:
    """Encode an ``HxWx3`` uint8 RGB image as PNG bytes (lossless: decoding gives it back exactly).

    zlib at level 1 with run-length matching (``Z_RLE``), which finds the black runs of pose maps and
    the flat areas of renders: a full-preset result carries 324 frames or more, and Pillow's default
    level 6 took 6-17 times as long for 0.9-1.1 times the bytes (docs/benchmarks.md, "The result's PNGs").
    """
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.size == 0:
        raise _bad("image", f"must be a non-empty HxWx3 uint8 array, got {a.dtype.name} {a.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buffer, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return buffer.getvalue()


def png_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` as the PNG's IHDR chunk declares them, without decoding any pixels."""
    # Read the size ourselves: a tiny file can declare a gigapixel image.
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise _bad("image", "is not a PNG image")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise _bad("image", f"declares an empty size {width}x{height}")
    return width, height


def blob_png(data: bytes, max_pixels: int = Limits().max_pixels) -> np.ndarray:
    """Decode PNG bytes to ``HxWx3`` uint8, refusing images over ``max_pixels`` before decoding."""
    width, height = png_size(data)
    if width * height > max_pixels:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"The PNG declares {width}x{height} pixels, more than "
                            f"the limit of {max_pixels}; use a smaller render size.")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            return np.array(image.convert("RGB"))
    except Exception as exc:  # Pillow raises many types for corrupt files; all mean "bad image"
        raise _bad("image", f"could not be decoded as PNG ({exc})") from exc

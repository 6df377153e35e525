"""The wire protocol: round trips, limits before parsing, schema errors, and fuzzed input."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from animax_addon.core import protocol
from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.pose_maps import render_pose_maps
from animax_addon.core.protocol import (
    ErrorCode,
    Limits,
    Message,
    MessageType,
    ProtocolError,
    Receiver,
    array_blob,
    blob_array,
    blob_png,
    decode,
    encode,
    error_message,
    png_blob,
)
from animax_addon.core.rig import Rig

RNG = np.random.default_rng(0)
IMAGES = [RNG.integers(0, 256, (8, 6, 3), dtype=np.uint8) for _ in range(3)]


def submit(**options) -> Message:
    opts = {"steps": 50, "guidance": 3.0, "seed": 7, "frames": 81, "fps": 16.0, "outputs": ["pose", "rgb"],
            "variations": 1}
    opts.update(options)
    body = {"prompt": "a fox jumps", "rig": {"bones": [{"name": "root", "parent": None}]},
            "cameras": {"views": 2}, "options": opts, "templates": [0, 1]}
    return Message(MessageType.SUBMIT, "job-1", body, (png_blob(IMAGES[0]), png_blob(IMAGES[1])))


def result() -> Message:
    """Two variations: arrays along a leading axis, videos variation-major."""
    joints, joints_bytes = array_blob(RNG.standard_normal((2, 4, 3)).astype(np.float32))
    ids, ids_bytes = array_blob(np.arange(6, dtype=np.int64).reshape(2, 3))
    body = {"variations": 2, "arrays": {"joints": {**joints, "blob": 0}, "ids": {**ids, "blob": 1}},
            "videos": {"pose": [2, 3]}, "diagnostics": {"reprojection_px": 0.5}}
    return Message(MessageType.RESULT, "job-1", body,
                   (joints_bytes, ids_bytes, png_blob(IMAGES[0]), png_blob(IMAGES[2])))


PRESET = {"name": "tiny", "size": 64, "frames": 17, "steps": 20, "guidance": 3.0, "fps": 16, "joints": 28}
VALID = [
    Message(MessageType.HELLO, None, {"client": "blender-addon", "version": "0.1.0"}),
    Message(MessageType.WELCOME, None, {"worker": "gpu-1", "version": "0.1.0", "protocol": 1, "model": "tiny",
                                        "preset": PRESET}),
    Message(MessageType.READY, None, {"worker": "gpu-2", "version": "0.1.0", "protocol": 1, "model": "tiny",
                                      "preset": PRESET}),
    submit(),
    Message(MessageType.ACCEPTED, "job-1", {"position": 0}),
    Message(MessageType.PROGRESS, "job-1", {"stage": "denoise", "step": 3, "total": 50, "eta_s": 12.5}),
    Message(MessageType.PROGRESS, "job-1", {"stage": "load", "step": 0, "total": 0, "eta_s": None}),
    result(),
    error_message(ErrorCode.QUEUE_FULL, ErrorCode.QUEUE_FULL.sentence, job="job-1"),
    error_message(ErrorCode.BAD_VERSION, "version mismatch"),
    Message(MessageType.CANCEL, "job-1"),
    Message(MessageType.CANCELLED, "job-1"),
    Message(MessageType.HEARTBEAT),
]


def frames_of(header: dict, blobs: list[bytes] = ()) -> list[bytes]:
    return [json.dumps(header).encode(), *blobs]


def header(type_="heartbeat", job=None, body=None, blobs=0, v=protocol.PROTOCOL_VERSION) -> dict:
    return {"v": v, "type": type_, "job": job, "body": {} if body is None else body, "blobs": blobs}


def raises(code: ErrorCode, frames, limits=Limits(), match: str | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(frames, limits)
    assert info.value.code is code, info.value
    if match is not None:
        assert match in str(info.value)
    return info.value


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("message", VALID, ids=lambda m: m.type.value)
def test_round_trip_every_type(message):
    frames = encode(message)
    assert all(isinstance(f, bytes) for f in frames)
    assert json.loads(frames[0])["v"] == protocol.PROTOCOL_VERSION
    assert decode(frames) == message
    assert decode([bytearray(f) for f in frames]) == message  # zmq may hand over other buffers


def test_every_type_is_covered():
    assert {m.type for m in VALID} == set(MessageType)


def test_arrays_and_pngs_are_bit_exact():
    sent = result()
    message = decode(encode(sent))
    joints = message.body["arrays"]["joints"]
    got = blob_array(joints, message.blobs[joints["blob"]])
    assert got.dtype == np.float32 and got.flags.writeable
    assert got.tobytes() == sent.blobs[0]
    for blob, image in zip(message.blobs[2:], (IMAGES[0], IMAGES[2])):
        np.testing.assert_array_equal(blob_png(blob), image)


@pytest.mark.parametrize("dtype", protocol.ARRAY_DTYPES)
def test_array_round_trip_each_dtype_and_big_endian_input(dtype):
    a = (np.arange(24) - 5).astype(dtype).reshape(2, 3, 4)
    for source in (a, a.astype(a.dtype.newbyteorder(">")), a[:, ::2]):
        spec, data = array_blob(source)
        np.testing.assert_array_equal(blob_array(spec, data), source)
    spec, data = array_blob(np.zeros((0, 3), dtype))
    assert blob_array(spec, data).shape == (0, 3)


# --- limits, before parsing ----------------------------------------------------------------------


@pytest.fixture
def no_json(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("json.loads called before the limits were checked")

    monkeypatch.setattr(protocol.json, "loads", fail)


@pytest.mark.parametrize("frames, limits", [
    ([b"{}"] * 5, Limits(max_frames=4)),
    ([b" " * 101], Limits(max_header_bytes=100)),
    ([b"{}", b"x" * 11], Limits(max_frame_bytes=10)),
    ([b"{}", b"x" * 60, b"x" * 60], Limits(max_total_bytes=100)),
])
def test_limits_are_checked_before_json(no_json, frames, limits):
    raises(ErrorCode.TOO_LARGE, frames, limits, match="limit")


@pytest.mark.parametrize("frames", [[], "abc", b"{}", [b"{}", "text"], [None]])
def test_bad_frames_before_json(no_json, frames):
    raises(ErrorCode.BAD_FRAME, frames)


def test_default_limits():
    limits = Limits()
    assert (limits.max_frames, limits.max_header_bytes) == (1024, 64 * 1024)
    assert (limits.max_frame_bytes, limits.max_total_bytes) == (16 * 2**20, 256 * 2**20)


def test_socket_frame_limit_is_the_largest_frame_decode_accepts():
    assert Limits().max_part_bytes == 16 * 2**20
    assert Limits(max_header_bytes=2**20, max_frame_bytes=1000).max_part_bytes == 2**20


@pytest.fixture
def socket_pair():
    """Two connected PAIR sockets: what one sends, the other's ``Receiver`` reads."""
    context = zmq.Context.instance()
    sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    address = f"inproc://receiver-{id(sender)}"
    receiver.bind(address)
    sender.connect(address)
    yield sender, receiver
    sender.close(0)
    receiver.close(0)


def receive_all(receiver: Receiver, budget=4096):
    """``receive`` called until a message is complete: (the calls it took, the message)."""
    for calls in range(1, 1000):
        if (received := receiver.receive(budget)) is not None:
            return calls, received
    raise AssertionError("no message")


def test_receiver_drops_a_message_of_too_many_frames_unkept(socket_pair):
    sender, socket = socket_pair
    receiver = Receiver(socket, Limits(max_frames=4), route=1)  # as on a ROUTER: an identity first
    heartbeat = encode(Message(MessageType.HEARTBEAT))
    sender.send_multipart([b"peer", *[b""] * 1000])
    sender.send_multipart([b"peer", *heartbeat])
    calls, (route, refused) = receive_all(receiver, budget=100)
    assert calls == 11 and route == [b"peer"]  # 1001 frames read over several calls, 100 at a time
    assert isinstance(refused, ProtocolError) and refused.code is ErrorCode.TOO_LARGE
    assert "1000 frames, more than the limit of 4" in refused.sentence
    assert receiver.receive() == ([b"peer"], Message(MessageType.HEARTBEAT))  # the next message is whole
    assert receiver.receive() is None and receiver._frames == []


def test_receiver_stops_keeping_frames_past_the_byte_limit(socket_pair):
    sender, socket = socket_pair
    receiver = Receiver(socket, Limits(max_total_bytes=100))
    sender.send_multipart([b"{}", *[b"x" * 60] * 3])
    _, (_, refused) = receive_all(receiver, budget=2)
    assert refused.code is ErrorCode.TOO_LARGE and "182 bytes, more than the limit of 100" in refused.sentence
    sender.send_multipart([b"{not json"])
    assert receiver.receive()[1].code is ErrorCode.BAD_JSON  # decode's own errors, as values too


def test_encode_refuses_what_the_peer_would_refuse():
    with pytest.raises(ProtocolError) as info:
        encode(submit(), Limits(max_frame_bytes=10))
    assert info.value.code is ErrorCode.TOO_LARGE


# --- header errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [b"{", b"\xff\xfe", b"[1, 2]", b'{"v": NaN}', b"[" * 30000 + b"]" * 30000])
def test_bad_json(text):
    raises(ErrorCode.BAD_JSON, [text])


@pytest.mark.parametrize("v", [1, 3, 0, "2", True, None, 2.0])
def test_wrong_version(v):
    raises(ErrorCode.BAD_VERSION, frames_of(header(v=v)), match="version")


def test_missing_version():
    raises(ErrorCode.BAD_VERSION, [b'{"type": "heartbeat"}'])


@pytest.mark.parametrize("type_", ["submitt", "", 3, None, ["hello"]])
def test_unknown_type(type_):
    raises(ErrorCode.UNKNOWN_TYPE, frames_of(header(type_=type_)))


@pytest.mark.parametrize("key", ["job", "body", "blobs"])
def test_missing_header_key(key):
    h = header()
    del h[key]
    raises(ErrorCode.BAD_FIELD, frames_of(h), match=f"'{key}'")


def test_unknown_header_key():
    raises(ErrorCode.BAD_FIELD, frames_of({**header(), "extra": 1}), match="'extra'")


def test_blob_count_mismatch():
    frames = encode(submit())
    raises(ErrorCode.BAD_FRAME, frames[:-1], match="announces 2 blobs but 1")
    raises(ErrorCode.BAD_FRAME, frames + [b"x"], match="announces 2 blobs but 3")


def test_unreferenced_and_doubly_used_blobs():
    raises(ErrorCode.BAD_FRAME, frames_of(header(blobs=1), [b"x"]), match="not referenced")
    m = submit()
    body = {**m.body, "templates": [0, 0]}
    raises(ErrorCode.BAD_FIELD, frames_of(header("submit", "j", body, 2), list(m.blobs)), match="templates[1]")


@pytest.mark.parametrize("type_, job", [
    ("submit", None), ("cancel", ""), ("cancel", "a" * 65), ("cancel", "a b"), ("cancel", "ü"),
    ("cancel", "a\n"), ("cancel", 5), ("hello", "job-1"), ("heartbeat", "job-1"),
])
def test_bad_job_ids(type_, job):
    body = {"client": "c", "version": "v"} if type_ == "hello" else submit().body if type_ == "submit" else {}
    raises(ErrorCode.BAD_FIELD, frames_of(header(type_, job, body, 2 if type_ == "submit" else 0),
                                          list(submit().blobs) if type_ == "submit" else []), match="'job'")


def test_good_job_ids():
    for job in ("a", "A-z_09", "x" * 64):
        assert decode(encode(Message(MessageType.CANCEL, job))).job == job
    assert decode(encode(error_message("internal", "boom"))).job is None


# --- body schemas ---------------------------------------------------------------------------------


def submit_frames(**changes) -> list[bytes]:
    m = submit()
    body = json.loads(json.dumps(m.body))
    for path, value in changes.items():
        target = body
        *parents, leaf = path.split("__")
        for p in parents:
            target = target[p]
        if value is ...:
            del target[leaf]
        else:
            target[leaf] = value
    return frames_of(header("submit", "job-1", body, 2), list(m.blobs))


@pytest.mark.parametrize("changes, field", [
    ({"prompt": ...}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 1001}, "prompt"), ({"prompt": 3}, "prompt"), ({"prompt": "\ud800"}, "prompt"),
    ({"rig": []}, "rig"), ({"cameras": None}, "cameras"), ({"options": ...}, "options"),
    ({"options__steps": 0}, "options.steps"), ({"options__steps": 201}, "options.steps"),
    ({"options__steps": 5.0}, "options.steps"), ({"options__steps": True}, "options.steps"),
    ({"options__guidance": 0.5}, "options.guidance"), ({"options__guidance": "3"}, "options.guidance"),
    ({"options__seed": -1}, "options.seed"), ({"options__seed": 1.5}, "options.seed"),
    ({"options__frames": 4}, "options.frames"), ({"options__frames": 165}, "options.frames"),
    ({"options__frames": 0}, "options.frames"), ({"options__fps": 0}, "options.fps"),
    ({"options__outputs": []}, "options.outputs"), ({"options__outputs": ["depth"]}, "options.outputs"),
    ({"options__outputs": ["rgb", "rgb"]}, "options.outputs"), ({"options__outputs": [["x"]]}, "options.outputs"),
    ({"options__extra": 1}, "options.extra"), ({"options__seed": ...}, "options.seed"),
    ({"options__variations": ...}, "options.variations"), ({"options__variations": 0}, "options.variations"),
    ({"options__variations": protocol.MAX_VARIATIONS + 1}, "options.variations"),
    ({"options__variations": 2.0}, "options.variations"),
    ({"templates": []}, "templates"), ({"templates": [0, 5]}, "templates[1]"),
    ({"templates": [0, "1"]}, "templates[1]"), ({"templates": {"a": 0}}, "templates"),
    ({"extra": 1}, "extra"),
])
def test_submit_field_errors_name_the_field(changes, field):
    raises(ErrorCode.BAD_FIELD, submit_frames(**changes), match=f"'{field}'")


def test_overflowing_number_is_not_finite():
    frames = submit_frames(options__fps=16.0)
    frames[0] = frames[0].replace(b'"fps": 16.0', b'"fps": 1e400')  # json.loads reads inf
    raises(ErrorCode.BAD_FIELD, frames, match="'options.fps'")


@pytest.mark.parametrize("fps", [1e7, 1e308, protocol.MAX_FPS + 0.5])
def test_fps_over_the_limit_is_bad_field_before_any_work(fps):
    raises(ErrorCode.BAD_FIELD, submit_frames(options__fps=fps), match="'options.fps' must be a finite number "
           "above 0.0 and at most 1000.0")
    decode(submit_frames(options__fps=protocol.MAX_FPS))


def test_png_size_is_read_from_the_header(monkeypatch):
    monkeypatch.setattr(protocol.Image, "open", lambda *a, **k: pytest.fail("Pillow was asked to open the image"))
    assert protocol.png_size(png_blob(IMAGES[0])) == (6, 8)
    ihdr = struct.pack(">IIBBBBB", 4096, 4096, 8, 2, 0, 0, 0)
    assert protocol.png_size(protocol.PNG_SIGNATURE + png_chunk(b"IHDR", ihdr)) == (4096, 4096)


def test_submit_template_must_be_png():
    m = submit()
    frames = frames_of(header("submit", "job-1", m.body, 2), [m.blobs[0], b"not a png"])
    raises(ErrorCode.BAD_FIELD, frames, match="'templates[1]'")


def test_submit_frames_accepts_one_plus_4k():
    for frames in (1, 5, 81, 161):
        assert decode(submit_frames(options__frames=frames)).body["options"]["frames"] == frames


@pytest.mark.parametrize("type_, body, field", [
    ("hello", {"client": "c"}, "version"),
    ("hello", {"client": "", "version": "1"}, "client"),
    ("welcome", {"worker": "w", "version": "1", "protocol": 0, "model": "m", "preset": PRESET}, "protocol"),
    ("welcome", {"worker": "w", "version": "1", "protocol": 1, "model": "m"}, "preset"),
    ("welcome", {"worker": "w", "version": "1", "protocol": 1, "model": "m", "preset": dict(PRESET, frames=16)},
     "preset.frames"),
    ("ready", {"worker": "w", "version": "1", "protocol": 1, "model": "m", "preset": dict(PRESET, fps=0)},
     "preset.fps"),
    ("welcome", {"worker": "w", "version": "1", "protocol": 1, "model": "m", "preset": dict(PRESET, joints=65)},
     "preset.joints"),
    ("ready", {"worker": "w", "version": "1", "protocol": 1, "model": "m", "preset": dict(PRESET, seed=1)},
     "preset.seed"),
    ("accepted", {"position": -1}, "position"),
    ("progress", {"stage": "s", "step": 4, "total": 3, "eta_s": None}, "step"),
    ("progress", {"stage": "s", "step": 1, "total": 3, "eta_s": -1}, "eta_s"),
    ("error", {"code": "nope", "message": "m"}, "code"),
    ("error", {"code": "busy"}, "message"),
    ("heartbeat", {"x": 1}, "x"),
])
def test_other_field_errors_name_the_field(type_, body, field):
    job = None if type_ in ("hello", "welcome", "heartbeat", "ready") else "j"
    raises(ErrorCode.BAD_FIELD, frames_of(header(type_, job, body)), match=f"'{field}'")


@pytest.mark.parametrize("spec, field", [
    ({"blob": 0, "dtype": "float16", "shape": [5, 4, 3]}, "arrays.joints.dtype"),
    ({"blob": 0, "dtype": "float32", "shape": [2, 4, 2]}, "arrays.joints"),
    ({"blob": 0, "dtype": "float32", "shape": [2, -4, -3]}, "arrays.joints.shape"),
    ({"blob": 0, "dtype": "float32", "shape": "2,4,3"}, "arrays.joints.shape"),
    ({"blob": 0, "dtype": "float32"}, "arrays.joints.shape"),
    ({"blob": 9, "dtype": "float32", "shape": [2, 4, 3]}, "arrays.joints.blob"),
    ({"blob": 0, "dtype": "float32", "shape": [4, 2, 3]}, "arrays.joints.shape"),  # not the variations first
    ({"blob": 0, "dtype": "float32", "shape": []}, "arrays.joints.shape"),
])
def test_result_array_spec_errors(spec, field):
    m = result()
    body = json.loads(json.dumps(m.body))
    body["arrays"]["joints"] = spec
    raises(ErrorCode.BAD_FIELD, frames_of(header("result", "job-1", body, 4), list(m.blobs)), match=f"'{field}'")


@pytest.mark.parametrize("changes, field", [
    ({"variations": 0}, "variations"), ({"variations": protocol.MAX_VARIATIONS + 1}, "variations"),
    ({"variations": 3}, "arrays.joints.shape"), ({"variations": ...}, "variations"),
])
def test_result_variation_errors(changes, field):
    m = result()
    body = dict(json.loads(json.dumps(m.body)), **{k: v for k, v in changes.items() if v is not ...})
    for key in (k for k, v in changes.items() if v is ...):
        del body[key]
    raises(ErrorCode.BAD_FIELD, frames_of(header("result", "job-1", body, 4), list(m.blobs)), match=f"'{field}'")


def test_result_videos_hold_as_many_frames_for_each_variation():
    m = result()
    body = json.loads(json.dumps(m.body))
    body["videos"] = {"pose": [2, 3], "rgb": []}
    raises(ErrorCode.BAD_FIELD, frames_of(header("result", "job-1", body, 4), list(m.blobs)), match="'videos.rgb'")
    body["videos"] = {"pose": [2]}
    raises(ErrorCode.BAD_FIELD, frames_of(header("result", "job-1", body, 3), list(m.blobs[:3])),
           match="'videos.pose' must list the same number of frames, at least one, for each of the 2 variations")


def test_blob_array_rejects_mismatches():
    spec, data = array_blob(np.zeros((2, 3), np.float32))
    with pytest.raises(ProtocolError, match="declares 24 bytes") as info:
        blob_array(spec, data[:-1])
    assert info.value.code is ErrorCode.BAD_FIELD
    with pytest.raises(ProtocolError, match="'array.dtype'"):
        blob_array({**spec, "dtype": "object"}, data)
    with pytest.raises(ProtocolError) as info:
        blob_array({**spec, "shape": [10**6, 10**6]}, data)
    assert info.value.code is ErrorCode.TOO_LARGE
    with pytest.raises(ProtocolError, match="'dtype'"):
        array_blob(np.zeros(3, bool))


# --- PNG ----------------------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_png_bomb_is_refused_without_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("Pillow was asked to open the image")

    monkeypatch.setattr(protocol.Image, "open", fail)
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = protocol.PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")
    with pytest.raises(ProtocolError, match="100000x100000") as info:
        blob_png(bomb)
    assert info.value.code is ErrorCode.TOO_LARGE
    with pytest.raises(ProtocolError) as info:
        blob_png(png_blob(IMAGES[0]), max_pixels=47)  # 8x6 = 48 pixels
    assert info.value.code is ErrorCode.TOO_LARGE


def _stripes() -> np.ndarray:
    """Rows of 255 under rows of 0 and back: the differences PNG's row filters store wrap around modulo 256."""
    image = np.zeros((9, 5, 3), np.uint8)
    image[1::2] = 255
    image[:, :, 1] = np.arange(5, dtype=np.uint8)[None] * 60
    return image


def _pose_maps() -> np.ndarray:
    """A frame as a worker sends it: pose maps drawn on black, with a decoder's noise of a few levels."""
    rig = Rig.from_dict({"bones": [{"name": "root", "parent": None, "head": [0, 0, 0], "tail": [0, 0, 0.5]},
                                   {"name": "arm", "parent": "root", "head": [0, 0, 0.5], "tail": [0.4, 0, 0.8]}]})
    cameras = make_camera_rig(np.array([0.0, 0.0, 0.4]), 0.7, 64)
    drawn = render_pose_maps(cameras, rig.joints_rest[None], rig.joint_parents)[1, 0]
    noise = np.random.default_rng(1).normal(0, 2, drawn.shape).round().astype(int)
    return np.clip(drawn + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("image", [
    np.zeros((64, 64, 3), np.uint8), np.full((3, 4, 3), 255, np.uint8), _stripes(), _pose_maps(),
    *(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(1, 1), (1, 9), (9, 1), (31, 17), (480, 480)]),
    np.asfortranarray(RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)),  # not C-contiguous
], ids=["black", "white", "stripes", "pose maps", "1x1", "1x9", "9x1", "31x17", "480x480", "fortran"])
def test_png_blob_is_lossless(image):
    data = png_blob(image)
    assert protocol.png_size(data) == (image.shape[1], image.shape[0])
    np.testing.assert_array_equal(blob_png(data), image)
    with Image.open(io.BytesIO(data)) as png:
        png.verify()  # chunk checksums
    with Image.open(io.BytesIO(data)) as png:
        assert (png.format, png.mode) == ("PNG", "RGB")


@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1), st.integers(1, 256))
@settings(max_examples=50, deadline=None)
def test_png_blob_round_trips_any_image(height, width, seed, levels):
    image = np.random.default_rng(seed).integers(0, levels, (height, width, 3), dtype=np.uint8)
    np.testing.assert_array_equal(blob_png(png_blob(image)), image)


@pytest.mark.parametrize("data", [b"", b"GIF89a" + b"\0" * 40, protocol.PNG_SIGNATURE + b"\0" * 30])
def test_png_not_a_png(data):
    with pytest.raises(ProtocolError, match="not a PNG"):
        blob_png(data)


def test_png_corrupt_pixels_and_bad_input():
    data = bytearray(png_blob(IMAGES[0]))
    with pytest.raises(ProtocolError, match="could not be decoded"):
        blob_png(bytes(data[:40]))
    with pytest.raises(ProtocolError, match="'image'"):
        png_blob(np.zeros((4, 4), np.uint8))
    with pytest.raises(ProtocolError, match="'image'"):
        png_blob(np.zeros((4, 4, 3), np.float32))


# --- errors --------------------------------------------------------------------------------------------


def test_error_codes_have_sentences():
    for code in ErrorCode:
        assert code.sentence.endswith(".") and len(code.sentence) > 10
    m = error_message("busy", ErrorCode.BUSY.sentence, job="j")
    assert m.body == {"code": "busy", "message": ErrorCode.BUSY.sentence} and m.job == "j"


def test_encode_rejects_invalid_messages():
    cases = [
        Message("nope"),
        Message(MessageType.HEARTBEAT, None, {}, ("text",)),
        Message(MessageType.PROGRESS, "j", {"stage": "s", "step": 0, "total": 1, "eta_s": float("nan")}),
        Message(MessageType.RESULT, "j", {"arrays": {}, "videos": {}, "diagnostics": {"x": object()}}),
    ]
    for message in cases:
        with pytest.raises(ProtocolError):
            encode(message)


# --- fuzzing -------------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
VALID_FRAMES = [encode(m) for m in VALID]
FIELDS = ["v", "type", "job", "body", "blobs", "prompt", "options", "steps", "templates", "arrays",
          "videos", "shape", "dtype", "blob", "code", "position", "stage", "eta_s"]


@st.composite
def mutated(draw) -> list[bytes]:
    frames = list(draw(st.sampled_from(VALID_FRAMES)))
    action = draw(st.sampled_from(["flip", "truncate", "drop", "add", "json", "replace"]))
    i = draw(st.integers(0, len(frames) - 1))
    if action == "flip" and frames[i]:
        data = bytearray(frames[i])
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        frames[i] = bytes(data)
    elif action == "truncate":
        frames[i] = frames[i][:draw(st.integers(0, len(frames[i])))]
    elif action == "drop":
        del frames[i]
    elif action == "add":
        frames.insert(i, draw(st.binary(max_size=16)))
    elif action == "json":
        frames[0] = json.dumps(draw(JSON)).encode()
    else:  # replace one field somewhere in the header with a random JSON value
        h = json.loads(frames[0])
        target = draw(st.sampled_from([h, h["body"], *[v for v in h["body"].values() if isinstance(v, dict)]]))
        target[draw(st.sampled_from(FIELDS))] = draw(JSON)
        frames[0] = json.dumps(h).encode()
    return frames


FRAME_LISTS = st.one_of(
    mutated(), mutated(), mutated(), mutated(),  # weighted: most of the schema is reached from valid frames
    st.lists(st.binary(max_size=64), max_size=4),
    st.lists(JSON.map(lambda v: json.dumps(v).encode()), min_size=1, max_size=3),
)


@settings(max_examples=1000, deadline=None)
@given(FRAME_LISTS)
def test_decode_fuzz_returns_message_or_protocol_error(frames):
    try:
        message = decode(frames)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode) and str(exc)
        return
    assert isinstance(message, Message) and isinstance(message.type, MessageType)
    assert decode(encode(message)) == message  # whatever decodes re-encodes identically

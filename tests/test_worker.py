"""The worker over real ZeroMQ sockets on 127.0.0.1, with the tiny random pipeline."""

import gc
import io
import json
import struct
import subprocess
import sys
import threading
from dataclasses import replace
from types import SimpleNamespace
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zmq
from PIL import Image

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.client import Client, WorkerUnavailable, result_arrays
from animax_addon.core import protocol
from animax_addon.core.protocol import (
    ErrorCode, Limits, Message, MessageType, ProtocolError, decode, encode, png_blob,
)
from animax_addon.core.request import Options, Request
from backend.model.pipeline_animax import AnimaXPipeline, AnimaXPipelineOutput
from backend.model.loading import build_tiny_pipeline
from backend.model.presets import FULL, TINY
from backend.worker import jobs
from backend.worker.fair_queue import client_cap
from backend.worker.job_limits import JobInputError, check_job_size, max_steps, png_bytes_most
from backend.worker.security import check_address
from backend.worker.standalone import Standalone
from test_protocol import png_chunk

SIZE, FRAMES = 32, 5
RIG = {"bones": [
    {"name": "root", "parent": None, "head": [0, 0, 0], "tail": [0, 0, 0.5]},
    {"name": "arm", "parent": "root", "head": [0, 0, 0.5], "tail": [0.4, 0, 0.8]},
    {"name": "head", "parent": "root", "head": [0, 0, 0.5], "tail": [0, 0, 1.0]},
]}
CAMERAS = make_camera_rig(np.array([0.0, 0.0, 0.5]), 0.7, SIZE).to_dict()
TEMPLATES = np.random.default_rng(0).integers(0, 255, (4, SIZE, SIZE, 3), dtype=np.uint8)
# The biggest job a tiny worker takes: one still running while a test goes on.
LONG_JOB = dict(steps=max_steps(TINY.num_inference_steps), frames=TINY.num_frames)


def options(steps=2, **changes) -> Options:
    return replace(Options(steps=steps, guidance=3.0, seed=0, frames=FRAMES, fps=16.0), **changes)


def request(rig=RIG, templates=TEMPLATES, cameras=CAMERAS, **changes) -> Request:
    return Request.from_images("the fox jumps", rig, cameras, templates, options(**changes))


@pytest.fixture(scope="module")
def pipeline():
    return build_tiny_pipeline()


@pytest.fixture
def make_worker(pipeline):
    started = []

    def make(**kwargs):
        worker = Standalone(pipeline, "tcp://127.0.0.1:*", **kwargs)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        started.append((worker, thread))
        return worker

    yield make
    for worker, thread in started:
        worker.stop()
        thread.join(30)


@pytest.fixture
def worker(make_worker):
    return make_worker()


def submit(client, job=None, **changes):
    return client.submit(request(**changes), job=job)


def until(client, job, kind):
    seen = []
    for message in client.events(job):
        seen.append(message)
        if message.type == kind:
            return seen
    raise AssertionError(f"no {kind} for {job}: {[m.type for m in seen]}")


def cancel_once_running(client, job) -> list:
    """Cancel ``job`` at its first PROGRESS; the messages that follow, up to the last."""
    events = client.events(job)
    for message in events:
        if message.type == MessageType.PROGRESS:
            break
    client.cancel(job)
    return list(events)


def test_hello_and_full_job(worker):
    with Client(worker.address) as client:
        welcome = client.hello()
        assert welcome["model"] == "tiny" and welcome["protocol"] == protocol.PROTOCOL_VERSION
        job = submit(client)
        messages = list(client.events(job))
    assert messages[0].type == MessageType.ACCEPTED and messages[0].body["position"] == 0
    assert messages[-1].type == MessageType.RESULT
    (out,) = result_arrays(messages[-1])
    assert out["rotations"].shape == (FRAMES, 3, 4) and np.isfinite(out["rotations"]).all()
    assert out["root_translation"].shape == (FRAMES, 3)
    assert len(messages[-1].body["videos"]["pose"]) == 4 * FRAMES
    assert out["pose_video"].shape == (4, FRAMES, SIZE, SIZE, 3)
    progress = [m.body for m in messages if m.type == MessageType.PROGRESS]
    denoise = [p["step"] for p in progress if p["stage"] == "denoise"]
    assert denoise == [1, 2] and all(p["step"] <= p["total"] for p in progress)
    assert [p["stage"] for p in progress][-1] == "reconstruct"
    assert set(messages[-1].body["diagnostics"]["seconds"]) >= {"denoise", "reconstruct"}


def test_bad_user_input_is_bad_field(worker):
    with Client(worker.address) as client:
        job = client.submit(request(rig={"bones": []}))
        error = until(client, job, MessageType.ERROR)[-1]
        assert error.body["code"] == "bad_field" and "rig" in error.body["message"]
        small = TEMPLATES[:, :16, :16]
        job = client.submit(request(templates=small))
        error = until(client, job, MessageType.ERROR)[-1]
        assert error.body["code"] == "bad_field" and "16x16" in error.body["message"]


def test_rig_past_the_models_joints_is_refused_with_the_limit(make_worker):
    worker = make_worker(preset=replace(TINY, max_joints=3))  # RIG has 5 joints: 3 heads, 2 leaf tails
    with Client(worker.address) as client:
        assert client.hello()["preset"]["joints"] == 3
        error = until(client, submit(client), MessageType.ERROR)[-1]
    assert error.body["code"] == "bad_field"
    assert "has 5 joints" in error.body["message"] and "at most 3 apart" in error.body["message"]


def test_cancel_running_and_unknown(worker):
    with Client(worker.address) as client:
        job = submit(client, steps=50)
        after = cancel_once_running(client, job)
        assert after[-1].type == MessageType.CANCELLED
        assert all(m.type != MessageType.RESULT for m in after)
        assert len([m for m in after if m.type == MessageType.PROGRESS]) <= 2  # within one step
        assert worker.job_states()[job] == "cancelled"
        client.cancel("nobody")
        error = until(client, "nobody", MessageType.ERROR)[-1]
        assert error.body["code"] == "unexpected"


def test_malformed_frames_then_real_job(worker):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(worker.address)
    header = {"v": protocol.PROTOCOL_VERSION, "type": "heartbeat", "job": None, "body": {}, "blobs": 0}
    cases = [([np.random.default_rng(1).bytes(64)], "bad_json"), ([b"{not json"], "bad_json"),
             ([json.dumps(dict(header, v=protocol.PROTOCOL_VERSION - 1)).encode()], "bad_version"),
             ([json.dumps(dict(header, type="dance")).encode()], "unknown_type"),
             ([json.dumps(header).encode(), b"extra"], "bad_frame")]
    try:
        for frames, code in cases:
            sock.send_multipart(frames)
            assert sock.poll(5000)
            reply = decode(sock.recv_multipart())
            assert reply.type == MessageType.ERROR and reply.body["code"] == code, (frames, reply)
    finally:
        sock.close(0)
    with Client(worker.address) as client:
        assert until(client, submit(client), MessageType.RESULT)


def held_submits(job_ids) -> list[str]:
    """The ids among ``job_ids`` of SUBMIT messages that some live object still holds."""
    gc.collect()
    return [o.job for o in gc.get_objects()
            if type(o) is Message and o.type == MessageType.SUBMIT and o.job in job_ids]


def test_finished_jobs_leave_only_their_outcome(worker):
    worker.broker._finished.size = 5
    ids = [f"bad{i}" for i in range(15)]
    with Client(worker.address) as client:
        for job in ids:  # a rig the worker refuses: each job runs and fails at once
            client.submit(request(rig={"bones": []}), job=job)
            until(client, job, MessageType.ERROR)
        assert worker.job_states() == {job: "failed" for job in ids[10:]}
        assert not worker.broker._jobs
        # The compute thread still refers to the job it ran last until it takes the next one.
        assert held_submits(ids[:-1]) == []
        client.cancel("bad14")
        assert "already finished (failed)" in until(client, "bad14", MessageType.ERROR)[-1].body["message"]
        client.cancel("bad0")
        assert "not queued or running" in until(client, "bad0", MessageType.ERROR)[-1].body["message"]


def test_sockets_drop_frames_over_the_protocol_limit_unread(make_worker):
    limits = Limits(max_frame_bytes=64 * 1024)
    worker = make_worker(limits=limits)
    for socket in (worker.broker._frontend, worker.broker._backend, worker.worker._socket):
        assert socket.getsockopt(zmq.MAXMSGSIZE) == limits.max_part_bytes
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(worker.address)
    try:
        header = {"v": protocol.PROTOCOL_VERSION, "type": "heartbeat", "job": None, "body": {}, "blobs": 1}
        sock.send_multipart([json.dumps(header).encode(), bytes(limits.max_part_bytes + 1)])
        with Client(worker.address) as client:
            assert client.hello()["model"] == "tiny"
        assert not sock.poll(1000)  # libzmq dropped it: the worker never saw it to answer too_large
    finally:
        sock.close(0)


def header_only_png(width: int, height: int) -> bytes:
    """A few bytes that declare a ``width`` x ``height`` RGB image."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return protocol.PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


@pytest.mark.parametrize("last, sentence", [
    ([header_only_png(4096, 4096)], "Template 3 is 4096x4096 pixels but the cameras render 32x32"),
    ([png_blob(TEMPLATES[0])] * 2, "5 template images were sent for 4 camera views"),
])
def test_templates_are_checked_against_the_cameras_before_decoding(monkeypatch, last, sentence):
    monkeypatch.setattr(jobs, "blob_png", lambda *a, **k: pytest.fail("a template was decoded"))
    blobs = [png_blob(image) for image in TEMPLATES[:3]] + last
    submit = replace(request(), templates=tuple(blobs)).to_message("t")
    reply = jobs.run_job(None, submit, lambda *a: None, lambda: False)
    assert reply.type == MessageType.ERROR and reply.body["code"] == "bad_field"
    assert sentence in reply.body["message"]


def preset_submit(size: int, views: int = 4, **changes) -> Message:
    """A SUBMIT of ``views`` cameras of ``size`` px and their templates (PNG headers only), for a
    preset's limits."""
    azimuths = np.arange(views) * 360.0 / views
    cameras = make_camera_rig(np.array([0.0, 0.0, 0.5]), 0.7, size, azimuths_deg=azimuths).to_dict()
    return Request("walk", RIG, cameras, options(**changes), (header_only_png(size, size),) * views).to_message("t")


@pytest.mark.parametrize("size, changes, sentence", [
    (TINY.size, dict(steps=LONG_JOB["steps"] + 1), "81 denoising steps were asked for, but the tiny model's "
     "worker runs at most 80 (4 times its default of 20); ask for fewer steps."),
    (TINY.size, dict(frames=TINY.num_frames + 4), "21 frames were asked for, but the tiny model makes at most 17; "
     "ask for fewer frames."),
    (4096, {}, "The cameras render 4096x4096 images, but the tiny model works at 64x64 at most; "
     "render the templates at 64 px."),
])
def test_preset_limits_are_checked_before_decoding(monkeypatch, size, changes, sentence):
    monkeypatch.setattr(jobs, "blob_png", lambda *a, **k: pytest.fail("a template was decoded"))
    reply = jobs.run_job(None, preset_submit(size, **changes), lambda *a: None, lambda: False, TINY)
    assert reply.type == MessageType.ERROR and reply.body["code"] == "bad_field"
    assert reply.body["message"] == sentence


def test_an_rgb_video_asked_of_a_model_that_draws_pose_maps_alone_is_refused_before_it_runs(pipeline, monkeypatch):
    pose_only = AnimaXPipeline(None, None, pipeline.vae, pipeline.transformer.with_rgb_video(False), pipeline.scheduler)
    monkeypatch.setattr(AnimaXPipeline, "__call__", lambda *a, **k: pytest.fail("the model ran"))
    body = preset_submit(TINY.size, frames=TINY.num_frames, outputs=("pose", "rgb")).body
    templates = tuple(png_blob(np.zeros((TINY.size, TINY.size, 3), np.uint8)) for _ in range(4))
    reply = jobs.run_job(pose_only, Message(MessageType.SUBMIT, "t", body, templates), lambda *a: None, lambda: False,
                         TINY)
    assert reply.type == MessageType.ERROR and reply.body["code"] == "bad_field"
    assert reply.body["message"] == ("This worker's model draws the pose maps alone, so it has no RGB video to show: "
                                     "turn off RGB Preview in the AnimaX panel, or use a worker with the full model.")


def test_a_job_at_the_preset_limits_runs():
    calls = []

    def pipeline(**kwargs):  # records what the model was asked for, then ends as a cancelled run does
        calls.append(kwargs)
        return AnimaXPipelineOutput(pose_videos=None, rgb_videos=None, interrupted=True)
    body = preset_submit(TINY.size, **LONG_JOB).body
    templates = tuple(png_blob(np.zeros((TINY.size, TINY.size, 3), np.uint8)) for _ in range(4))
    reply = jobs.run_job(pipeline, Message(MessageType.SUBMIT, "t", body, templates), lambda *a: None, lambda: False, TINY)
    assert reply.type == MessageType.CANCELLED
    (call,) = calls
    assert call["num_inference_steps"] == 80 and call["num_frames"] == 17 and call["rgb_templates"].shape == (4, 64, 64, 3)


def views_submit(views: int, preset) -> Message:
    """A SUBMIT of ``views`` cameras of SIZE px, the preset's frames, pose and RGB video."""
    return preset_submit(SIZE, views, frames=preset.num_frames, outputs=("pose", "rgb"))


def admitted(submit: Message, preset) -> bool:
    try:
        check_job_size(submit.body, preset.name, preset.size, preset.num_frames, preset.num_inference_steps)
    except JobInputError:
        return False
    return True


def shaped_motion(rig, cameras, pose_videos, fps, body):
    """``jobs.scene_motion``'s shapes, without the reconstruction's work."""
    frames, joints = pose_videos.shape[1], body.rig.num_joints
    motion = SimpleNamespace(joints=np.zeros((frames, joints, 3)), confidence=np.zeros((frames, joints)),
                             reprojection_error=np.zeros((frames, joints)), joint_names=body.rig.joint_names)
    return motion, np.zeros((frames, rig.num_bones, 4)), np.zeros((frames, 3))


@pytest.mark.parametrize("preset, most_views", [(TINY, 29), (FULL, 6)])
def test_the_largest_job_a_preset_admits_has_a_result_a_message_carries(monkeypatch, preset, most_views):
    """A result carries 5 arrays and a PNG per view, frame and video: the product's 4 views of the
    preset's frames of pose and RGB video fit, the most views admitted make a result that encodes,
    and one view more is refused before anything is decoded."""
    assert admitted(views_submit(4, preset), preset)
    assert admitted(views_submit(most_views, preset), preset)
    with monkeypatch.context() as undecoded:
        undecoded.setattr(jobs, "blob_png", lambda *a, **k: pytest.fail("a template was decoded"))
        refused = jobs.run_job(None, views_submit(most_views + 1, preset), lambda *a: None, lambda: False, preset)
    images = (most_views + 1) * preset.num_frames * 2
    assert refused.type == MessageType.ERROR and refused.body["code"] == "bad_field"
    assert refused.body["message"] == (f"{most_views + 1} views x {preset.num_frames} frames of pose and rgb video "
                                       f"are {images} images, more than a result carries (1018); ask for fewer views "
                                       "or frames, or for one of the videos.")

    def pipeline(num_frames, **kwargs):  # black videos of the asked shape, as the model returns them
        videos = np.zeros((1, most_views, num_frames, SIZE, SIZE, 3), np.uint8)
        return AnimaXPipelineOutput(pose_videos=videos, rgb_videos=videos)

    monkeypatch.setattr(jobs, "scene_motion", shaped_motion)
    templates = tuple(png_blob(np.zeros((SIZE, SIZE, 3), np.uint8)) for _ in range(most_views))
    largest = replace(views_submit(most_views, preset), blobs=templates)
    result = jobs.run_job(pipeline, largest, lambda *a: None, lambda: False, preset)
    assert result.type == MessageType.RESULT
    assert len(decode(encode(result)).blobs) == 5 + most_views * preset.num_frames * 2 <= Limits().max_frames - 1


def test_result_frames_encoded_in_threads_keep_their_order(monkeypatch):
    """The worker encodes a RESULT's frames in a thread pool, finishing in any order; the client
    still gets every variation's, view's and frame's image back in its place, pixel for pixel."""
    rng = np.random.default_rng(3)
    shape = (2, 4, FRAMES, SIZE, SIZE, 3)  # variations, views, frames
    pose, rgb = (rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(2))
    monkeypatch.setattr(jobs, "scene_motion", shaped_motion)
    monkeypatch.setattr(jobs, "PNG_THREADS", 4)

    def slow_png_blob(frame):  # a delay of up to 3 ms, from the frame's noise: later frames often finish first
        time.sleep(frame[0, 0, 0] / 255 * 0.003)
        return protocol.png_blob(frame)
    monkeypatch.setattr(jobs, "png_blob", slow_png_blob)
    threads = []
    monkeypatch.setattr(jobs, "ThreadPoolExecutor",
                        lambda *a, **k: threads.append(a) or ThreadPoolExecutor(*a, **k))

    def pipeline(**kwargs):
        return AnimaXPipelineOutput(pose_videos=pose, rgb_videos=rgb)
    submit = request(variations=2, outputs=("pose", "rgb")).to_message("order")
    result = jobs.run_job(pipeline, submit, lambda *a: None, lambda: False)
    assert threads == [(4,), (4,)]  # a pool of 4 threads for each video
    assert result.type == MessageType.RESULT and result.body["diagnostics"]["seconds"]["encode"] > 0
    variations = result_arrays(decode(encode(result)))
    for i, variation in enumerate(variations):
        np.testing.assert_array_equal(variation["pose_video"], pose[i])
        np.testing.assert_array_equal(variation["rgb_video"], rgb[i])


@pytest.mark.parametrize("width, height", [(1, 1), (7, 3), (64, 64), (480, 480)])
def test_png_bytes_most_bounds_the_png_of_noise(width, height):
    noise = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    png = len(png_blob(noise))
    assert png <= png_bytes_most(width, height) <= 1.01 * png + 1024


def test_png_bytes_most_bounds_pillows_png_of_noise_and_the_largest_frame_admitted():
    """The bound holds for Pillow's PNGs too (its default level 6, IDAT chunks of 64 KiB), and at the
    largest square view whose bound a message frame takes, ``png_blob``'s noise fits the frame."""
    noise = np.random.default_rng(0).integers(0, 256, (480, 480, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    assert len(buffer.getvalue()) <= png_bytes_most(480, 480)
    size = max(s for s in range(2000, 3000) if png_bytes_most(s, s) <= Limits().max_frame_bytes)
    noise = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    assert len(png_blob(noise)) <= png_bytes_most(size, size) <= Limits().max_frame_bytes


def test_a_job_whose_result_blobs_may_not_fit_a_frame_is_refused_before_it_runs(monkeypatch, make_worker):
    """Each blob of the result at its worst (rotations of every bone at the scene's frame rate, a
    PNG of noise) must fit the largest frame a socket takes: checked before the job runs."""
    many_bones = {"bones": [{"name": f"b{i}", "parent": None, "head": [0, 0, 0], "tail": [0, 0, 1]}
                            for i in range(250)]}

    def at(fps: float) -> Message:
        message = preset_submit(FULL.size, frames=FULL.num_frames, fps=fps)
        return replace(message, body={**message.body, "rig": many_bones})

    assert admitted(at(60.0), FULL)  # 301 scene frames x 250 bones: 1.2 MB of rotations
    monkeypatch.setattr(jobs, "blob_png", lambda *a, **k: pytest.fail("a template was decoded"))
    refused = jobs.run_job(None, at(1000.0), lambda *a: None, lambda: False, FULL)
    assert refused.type == MessageType.ERROR and refused.body["code"] == "bad_field"
    assert refused.body["message"] == ("The result's rotations could take 20004000 bytes (81 frames at 1000 fps, 250 "
                                       "bones, 480 px views), more than one message frame carries (16777216); ask for "
                                       "a lower frame rate, or animate fewer bones.")
    # the arrays carry every variation: 17 frames at 1000 fps take 4 MB of rotations, 8 variations 32 MB
    def variations(count: int) -> Message:
        message = at(1000.0)
        return replace(message, body={**message.body, "options": {**message.body["options"], "frames": 17,
                                                                      "variations": count}})

    assert admitted(variations(1), FULL)
    several = jobs.run_job(None, variations(8), lambda *a: None, lambda: False, FULL)
    assert several.type == MessageType.ERROR and "The result's rotations could take" in several.body["message"]
    assert "(8 variations of 17 frames at 1000 fps" in several.body["message"]
    assert several.body["message"].endswith("ask for fewer variations or a lower frame rate, or animate fewer bones.")
    worker = make_worker(limits=Limits(max_frame_bytes=4096))  # a 32 px PNG may take 4131 bytes
    with Client(worker.address) as client:
        messages = until(client, submit(client), MessageType.ERROR)
    assert [m.type for m in messages] == [MessageType.ERROR] and messages[0].body["code"] == "bad_field"
    assert "The result's video frames could take 4131 bytes" in messages[0].body["message"]
    assert "render smaller templates" in messages[0].body["message"]
    assert worker.job_states() == {} and worker.started == []


def test_worker_refuses_more_frames_than_its_preset_makes(worker):
    with Client(worker.address) as client:
        frames = client.hello()["preset"]["frames"]
        error = until(client, submit(client, frames=frames + 4), MessageType.ERROR)[-1]
    assert error.body["code"] == "bad_field" and "the tiny model makes at most 17" in error.body["message"]


def test_cancel_mid_denoising_stops_at_the_step_and_writes_nothing(pipeline, monkeypatch):
    monkeypatch.setattr(jobs, "scene_motion", lambda *a: pytest.fail("a cancelled job was reconstructed"))
    steps = []
    submit = request(**LONG_JOB).to_message("t")
    reply = jobs.run_job(pipeline, submit, lambda stage, step, total: steps.append(step), lambda: len(steps) >= 3)
    assert reply.type == MessageType.CANCELLED and not reply.blobs
    assert steps == [1, 2, 3]  # the cancel seen after step 3 ends the job before step 4


def test_a_job_of_variations_is_each_seeds_job_with_one_prompt_and_template_encode(pipeline, monkeypatch):
    encodes, prompts = [], []
    encode_video = pipeline.vae.encode
    monkeypatch.setattr(pipeline.vae, "encode", lambda video: encodes.append(len(video)) or encode_video(video))
    hook = pipeline.text_encoder.register_forward_hook(lambda *a: prompts.append(1))
    try:
        steps = []
        result = jobs.run_job(pipeline, request(seed=5, variations=3).to_message("b"),
                              lambda stage, step, total: steps.append((stage, step, total)), lambda: False)
        assert encodes == [4, 4] and len(prompts) == 1  # the 4 RGB and the 4 pose templates, once for all 3
        singles = [jobs.run_job(pipeline, request(seed=5 + i).to_message(f"s{i}"), lambda *a: None, lambda: False)
                   for i in range(3)]
    finally:
        hook.remove()
    assert steps == [("denoise", 1, 2), ("denoise", 2, 2)] + [("reconstruct", i, 3) for i in range(4)]
    assert result.type == MessageType.RESULT and result.body["variations"] == 3
    assert result.body["arrays"]["rotations"]["shape"] == [3, FRAMES, 3, 4]
    variations = result_arrays(decode(encode(result)))
    for variation, single in zip(variations, singles, strict=True):
        (single,) = result_arrays(single)
        assert variation.keys() == single.keys()
        for name, value in single.items():
            if value.dtype == np.uint8:  # a video: batched arithmetic may round a pixel the other way
                assert np.abs(variation[name].astype(int) - value).max() <= 1, name
            else:
                np.testing.assert_allclose(variation[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
    videos = [variation["pose_video"].astype(int) for variation in variations]
    assert all(np.abs(a - b).mean() > 1 for i, a in enumerate(videos) for b in videos[i + 1:])  # each its own seed


@pytest.mark.parametrize("changes, sentence", [
    (dict(variations=8, steps=TINY.num_inference_steps + 1), "8 variations of 21 denoising steps were asked for, "
     "but the tiny model's worker runs at most 160 steps times variations a job (8 times its default of 20 "
     "steps); ask for fewer variations or steps."),
    (dict(variations=8, frames=TINY.num_frames, outputs=("pose", "rgb")), "8 variations x 4 views x 17 frames of "
     "pose and rgb video are 1088 images, more than a result carries (1018); ask for fewer variations, views or "
     "frames, or for one of the videos."),
])
def test_variations_past_the_preset_are_refused_before_decoding(monkeypatch, changes, sentence):
    monkeypatch.setattr(jobs, "blob_png", lambda *a, **k: pytest.fail("a template was decoded"))
    reply = jobs.run_job(None, preset_submit(TINY.size, **changes), lambda *a: None, lambda: False, TINY)
    assert reply.type == MessageType.ERROR and reply.body["code"] == "bad_field"
    assert reply.body["message"] == sentence


@pytest.mark.parametrize("preset, most", [(TINY, 8), (FULL, 3)])
def test_the_most_variations_a_preset_admits(preset, most):
    """At the default steps and pose video only: the panel's 8 on the tiny model; the full
    model's 4 views x 81 frames fill a result's blobs at 3."""
    def job(variations):
        return preset_submit(SIZE, frames=preset.num_frames, steps=preset.num_inference_steps, variations=variations)
    assert admitted(job(most), preset)
    assert most == protocol.MAX_VARIATIONS or not admitted(job(most + 1), preset)


def test_more_variations_than_the_protocol_allows_are_never_sent():
    with pytest.raises(ProtocolError, match="'options.variations' must be an integer from 1 to 8") as info:
        encode(request(variations=protocol.MAX_VARIATIONS + 1).to_message("t"))
    assert info.value.code is ErrorCode.BAD_FIELD


def test_worker_refuses_variations_past_its_preset(worker):
    with Client(worker.address) as client:
        error = until(client, submit(client, variations=8, steps=21), MessageType.ERROR)[-1]
    assert error.body["code"] == "bad_field" and "ask for fewer variations or steps" in error.body["message"]


def fake_result(server: zmq.Socket, pngs: list[bytes]) -> None:
    """Answer the next SUBMIT that reaches ``server`` with a RESULT whose pose video is ``pngs``."""
    while True:
        assert server.poll(30_000)
        identity, *frames = server.recv_multipart()
        message = decode(frames)
        if message.type == MessageType.SUBMIT:
            break
    body = {"variations": 1, "arrays": {}, "videos": {"pose": list(range(len(pngs)))}, "diagnostics": {"views": 4}}
    server.send_multipart([identity, *encode(Message(MessageType.RESULT, message.job, body, tuple(pngs)))])


def test_client_checks_result_pngs_against_the_job_before_decoding(monkeypatch):
    frame = png_blob(TEMPLATES[0])
    bomb = [frame] * (4 * FRAMES - 1) + [header_only_png(4096, 4096)]
    with zmq.Context.instance().socket(zmq.ROUTER) as server:
        server.setsockopt(zmq.LINGER, 0)
        port = server.bind_to_random_port("tcp://127.0.0.1")
        with Client(f"tcp://127.0.0.1:{port}", timeout_s=30) as client:
            assert client._sock().getsockopt(zmq.MAXMSGSIZE) == Limits().max_part_bytes
            with monkeypatch.context() as patch:
                patch.setattr(protocol.Image, "open", lambda *a, **k: pytest.fail("a result frame was decoded"))
                for pngs, code, words in [(bomb, ErrorCode.TOO_LARGE, "4096x4096"),
                                          ([frame] * (4 * FRAMES - 1), ErrorCode.BAD_FIELD, "19 'pose' frames")]:
                    job = submit(client)
                    fake_result(server, pngs)
                    with pytest.raises(ProtocolError, match=words) as info:
                        list(client.events(job))
                    assert info.value.code is code
            job = submit(client)
            fake_result(server, [frame] * (4 * FRAMES))
            (out,) = result_arrays(list(client.events(job))[-1])
            assert out["pose_video"].shape == (4, FRAMES, SIZE, SIZE, 3)


def test_queue_bound(make_worker):
    worker = make_worker(queue_size=1)
    with Client(worker.address) as client:
        blocker = submit(client, **LONG_JOB)
        until(client, blocker, MessageType.PROGRESS)
        second = submit(client)
        assert until(client, second, MessageType.ACCEPTED)[-1].body["position"] == 0
        third = submit(client)
        assert until(client, third, MessageType.ERROR)[-1].body["code"] == "queue_full"
        client.cancel(second)
        client.cancel(blocker)
        until(client, second, MessageType.CANCELLED)
        until(client, blocker, MessageType.CANCELLED)


def one_client_cannot_fill_the_queue(address: str) -> None:
    """At a worker or a broker with a queue of 4 (one client may keep 1 place): client a's second
    waiting job is refused while client b is still admitted."""
    with Client(address) as a, Client(address) as b:
        blocker = submit(a, **LONG_JOB, job="a0")
        until(a, blocker, MessageType.PROGRESS)  # running: holds no place in the queue
        submit(a, job="a1")
        until(a, "a1", MessageType.ACCEPTED)
        submit(a, job="a2")
        error = until(a, "a2", MessageType.ERROR)[-1]
        assert error.body["code"] == ErrorCode.QUEUE_FULL.value
        assert "This client has 1 job waiting" in error.body["message"]
        submit(b, job="b1")  # another client is still admitted
        assert until(b, "b1", MessageType.ACCEPTED)[-1].body["position"] == 0  # ahead of a1: round robin
        for client, job in ((b, "b1"), (a, "a1"), (a, "a0")):
            client.cancel(job)
            until(client, job, MessageType.CANCELLED)


# Another process (a thread here would share the GIL with the service): three messages of a
# million empty frames each, then the header of each answer, one a line.
FLOOD = """
import sys, zmq
sock = zmq.Context.instance().socket(zmq.DEALER)
sock.connect(sys.argv[1])
for _ in range(3):
    sock.send_multipart([b""] * 1_000_000)
for _ in range(3):
    assert sock.poll(120_000), "no answer"
    print(sock.recv_multipart()[0].decode(), flush=True)
"""


def empty_frame_floods_beside_a_job(service) -> None:
    """At a worker or a broker (``service``): three messages of a million empty frames each, sent
    while an honest client's job runs, are each refused with too_large, and the job completes.
    Reading them takes seconds, but between their frames the network thread goes on beating (the
    client gives up after 3 s without a word) and does not count the client's silence meanwhile."""
    states = []

    def flood():
        states.append(subprocess.run([sys.executable, "-c", FLOOD, service.address], capture_output=True,
                                     timeout=300, text=True))
        states.append(service.job_states()[job])

    with Client(service.address, liveness_s=3) as client:
        job = submit(client, **LONG_JOB)
        until(client, job, MessageType.PROGRESS)
        thread = threading.Thread(target=flood)
        thread.start()
        try:
            assert until(client, job, MessageType.RESULT)
        finally:
            thread.join(300)
    flooder, state = states
    assert flooder.returncode == 0, flooder.stderr
    refusals = [decode([line.encode()]) for line in flooder.stdout.splitlines()]
    assert [(m.type, m.body["code"]) for m in refusals] == [(MessageType.ERROR, "too_large")] * 3
    assert "1000000 frames, more than the limit of 1024" in refusals[0].body["message"]
    assert state == "running"  # the floods came and went while the job ran


def test_empty_frame_floods_are_refused_and_a_running_job_completes(worker):
    empty_frame_floods_beside_a_job(worker)


def test_one_client_cannot_fill_the_queue(make_worker):
    one_client_cannot_fill_the_queue(make_worker(queue_size=4).address)


def test_client_cap_is_a_quarter_of_the_queue():
    assert [client_cap(size) for size in (1, 3, 4, 5, 8, 16)] == [1, 1, 1, 2, 2, 4]


def test_round_robin_across_clients(worker):
    with Client(worker.address) as a, Client(worker.address) as b:
        first = submit(a, steps=30, job="a0")
        until(a, first, MessageType.PROGRESS)
        for job in ("a1", "a2"):
            submit(a, job=job)
            until(a, job, MessageType.ACCEPTED)
        submit(b, job="b1")
        assert until(b, "b1", MessageType.ACCEPTED)[-1].body["position"] == 0  # ahead of a1, a2
        # Each client follows its own jobs at the same time (as the add-on's thread does), so both
        # keep heartbeating however long a0 takes on a busy machine.
        with ThreadPoolExecutor(2) as pool:
            done = [pool.submit(lambda c=c, jobs=jobs: [until(c, j, MessageType.RESULT) for j in jobs])
                    for c, jobs in ((a, ("a0", "a1", "a2")), (b, ("b1",)))]
            for future in done:
                future.result()
    assert worker.started == ["a0", "b1", "a1", "a2"]


def test_vanished_client_jobs_are_cancelled(make_worker):
    worker = make_worker(heartbeat_s=0.2, liveness_s=1.0)
    client = Client(worker.address)
    running = submit(client, **LONG_JOB, job="gone0")
    until(client, running, MessageType.PROGRESS)
    submit(client, job="gone1")
    until(client, "gone1", MessageType.ACCEPTED)
    client.close()  # no cancel, no more heartbeats
    start = time.monotonic()
    while time.monotonic() - start < 4:
        states = worker.job_states()
        if states["gone0"] == states["gone1"] == "cancelled":
            break
        time.sleep(0.05)
    assert worker.job_states() == {"gone0": "cancelled", "gone1": "cancelled"}
    assert time.monotonic() - start < 2.5


def test_heartbeats_go_to_clients_with_a_job_only(make_worker):
    """A client's heartbeat is not answered: one whose job the service does not have (it restarted)
    hears nothing and reports it gone, while one with a job hears the service's own beats."""
    worker = make_worker(heartbeat_s=0.2)
    with Client(worker.address) as idle, Client(worker.address) as busy:
        idle.hello()
        idle._send(Message(MessageType.HEARTBEAT))
        assert idle._recv(1) is None
        job = submit(busy, **LONG_JOB)
        until(busy, job, MessageType.PROGRESS)
        deadline = time.monotonic() + 60
        while (message := busy._recv(60)).type != MessageType.HEARTBEAT:  # progress comes between
            assert time.monotonic() < deadline and message.type == MessageType.PROGRESS, message
        busy.cancel(job)
        until(busy, job, MessageType.CANCELLED)
        with pytest.raises(WorkerUnavailable, match="stopped answering"):
            list(idle.events("a-job-it-never-had"))


def test_no_worker_is_unavailable():
    with zmq.Context.instance().socket(zmq.ROUTER) as probe:  # a free port nobody listens on
        port = probe.bind_to_random_port("tcp://127.0.0.1")
    client = Client(f"tcp://127.0.0.1:{port}", timeout_s=1)
    start = time.monotonic()
    with pytest.raises(WorkerUnavailable, match=f"127.0.0.1:{port}"):
        client.hello()
    assert time.monotonic() - start < 2
    client.close()


@pytest.mark.parametrize("address", ["tcp://0.0.0.0:5555", "tcp://192.168.1.10:5555", "tcp://example.com:1"])
def test_non_loopback_refused(address, pipeline):
    with pytest.raises(ValueError, match="CurveZMQ"):
        check_address(address)
    with pytest.raises(ValueError, match="CurveZMQ"):
        Standalone(pipeline, address)


def test_loopback_allowed():
    for address in ("tcp://127.0.0.1:5555", "tcp://localhost:5555", "tcp://[::1]:5555", "ipc:///tmp/x"):
        check_address(address)


def test_fast_flag_switches_the_sampler_and_advertises_its_steps():
    import argparse

    from diffusers import UniPCMultistepScheduler

    from backend.model.loading import tiny_preset
    from backend.model.presets import TINY, TINY_WEIGHTS
    from backend.worker.pipeline_loading import load_pipeline
    from backend.worker.server import preset_body

    fast, preset = load_pipeline(argparse.Namespace(model="tiny", fast=True))
    assert isinstance(fast.scheduler, UniPCMultistepScheduler) and fast.config.guidance_end == 0.5
    assert preset_body(preset)["steps"] == 10 and preset.size == TINY.size and TINY.num_inference_steps == 20
    plain, preset = load_pipeline(argparse.Namespace(model="tiny", fast=False))
    assert plain.config.guidance_end == 1.0 and preset == tiny_preset(TINY_WEIGHTS)  # the shipped model's own

"""The worker over real ZeroMQ sockets on 127.0.0.1, with the tiny random pipeline."""

import json
import threading
from dataclasses import replace
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zmq

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.client import Client, WorkerUnavailable, result_arrays
from animax_addon.core.protocol import MessageType, decode
from backend.model.presets import TINY, build_tiny_pipeline
from backend.worker.server import Worker, check_address

SIZE, FRAMES = 32, 5
RIG = {"bones": [
    {"name": "root", "parent": None, "head": [0, 0, 0], "tail": [0, 0, 0.5]},
    {"name": "arm", "parent": "root", "head": [0, 0, 0.5], "tail": [0.4, 0, 0.8]},
    {"name": "head", "parent": "root", "head": [0, 0, 0.5], "tail": [0, 0, 1.0]},
]}
CAMERAS = make_camera_rig(np.array([0.0, 0.0, 0.5]), 0.7, SIZE).to_dict()
TEMPLATES = np.random.default_rng(0).integers(0, 255, (4, SIZE, SIZE, 3), dtype=np.uint8)


def options(steps=2, **changes):
    return dict(dict(steps=steps, guidance=3.0, seed=0, frames=FRAMES, fps=16.0, outputs=["pose"]), **changes)


@pytest.fixture(scope="module")
def pipeline():
    return build_tiny_pipeline()


@pytest.fixture
def make_worker(pipeline):
    started = []

    def make(**kwargs):
        worker = Worker(pipeline, "tcp://127.0.0.1:*", **kwargs)
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


def submit(client, steps=2, job=None, **kw):
    return client.submit("the fox jumps", RIG, CAMERAS, TEMPLATES, options(steps, **kw), job=job)


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
        assert welcome["model"] == "tiny" and welcome["protocol"] == 1
        job = submit(client)
        messages = list(client.events(job))
    assert messages[0].type == MessageType.ACCEPTED and messages[0].body["position"] == 0
    assert messages[-1].type == MessageType.RESULT
    out = result_arrays(messages[-1])
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
        job = client.submit("walk", {"bones": []}, CAMERAS, TEMPLATES, options())
        error = until(client, job, MessageType.ERROR)[-1]
        assert error.body["code"] == "bad_field" and "rig" in error.body["message"]
        small = TEMPLATES[:, :16, :16]
        job = client.submit("walk", RIG, CAMERAS, small, options())
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
    header = {"v": 1, "type": "heartbeat", "job": None, "body": {}, "blobs": 0}
    cases = [([np.random.default_rng(1).bytes(64)], "bad_json"), ([b"{not json"], "bad_json"),
             ([json.dumps(dict(header, v=2)).encode()], "bad_version"),
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


def test_queue_bound(make_worker):
    worker = make_worker(queue_size=1)
    with Client(worker.address) as client:
        blocker = submit(client, steps=200)
        until(client, blocker, MessageType.PROGRESS)
        second = submit(client)
        assert until(client, second, MessageType.ACCEPTED)[-1].body["position"] == 0
        third = submit(client)
        assert until(client, third, MessageType.ERROR)[-1].body["code"] == "queue_full"
        client.cancel(second)
        client.cancel(blocker)
        until(client, second, MessageType.CANCELLED)
        until(client, blocker, MessageType.CANCELLED)


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
    running = submit(client, steps=200, job="gone0")
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


def test_client_heartbeat_gets_answered(worker):
    with Client(worker.address) as client:
        client.hello()
        client._send(__import__("animax_addon.core.protocol", fromlist=["Message"]).Message(MessageType.HEARTBEAT))
        reply = client._recv(2)
        assert reply is not None and reply.type == MessageType.HEARTBEAT


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
        Worker(pipeline, address)


def test_loopback_allowed():
    for address in ("tcp://127.0.0.1:5555", "tcp://localhost:5555", "tcp://[::1]:5555", "ipc:///tmp/x"):
        check_address(address)


def test_fast_flag_switches_the_sampler_and_advertises_its_steps():
    import argparse

    from diffusers import UniPCMultistepScheduler

    from backend.model.presets import TINY
    from backend.worker.server import load_pipeline, preset_body

    fast, preset = load_pipeline(argparse.Namespace(model="tiny", fast=True))
    assert isinstance(fast.scheduler, UniPCMultistepScheduler) and fast.config.guidance_end == 0.5
    assert preset_body(preset)["steps"] == 10 and preset.size == TINY.size and TINY.num_inference_steps == 20
    plain, preset = load_pipeline(argparse.Namespace(model="tiny", fast=False))
    assert plain.config.guidance_end == 1.0 and preset == TINY

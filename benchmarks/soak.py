"""Soak: many jobs through a real broker and worker on loopback, and the RSS of both over time.

    .venv/bin/python benchmarks/soak.py [--jobs 10000] [--threads 4] [--warmup 1000]

The broker and the worker run in processes of their own (the worker joins over CurveZMQ, as in
``animax-serve``; the worker's model is the tiny preset with random weights, as in the tests).
``--threads`` client threads share the jobs, each kind in turn (``PLAN``):

- valid: 32 px cameras, 1 frame, 1 step, pose video out: a real RESULT;
- refused by the schema: steps 0, an unknown body key, not JSON, the previous protocol version, a bad job id;
- past the preset (steps 81, frames 21, 128 px cameras: the broker refuses them at admission);
- too large: 1101 frames, a 70 KB header, a template PNG that declares 4096 x 4096 (the worker
  refuses it before decoding), a 17 MiB frame (libzmq drops the connection: no answer);
- cancelled: while queued (right after ``accepted``) or while running (after the first progress,
  of a 4-step job);
- client gone: the client closes its socket after ``accepted`` or after the first progress, and
  every tenth time of a 40-step job that is still running when the broker notices the silence.

The RSS of the broker and the worker is sampled every ``--interval`` seconds (psutil). Reported:
RSS before the first job, after the warm-up jobs, at the end (once the broker has forgotten the
silent clients), the most after the warm-up, each outcome's count and the rate. The goal (issue 26)
is RSS flat within 100 MB after the warm-up.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import multiprocessing as mp
import struct
import tempfile
import threading
import time
import zlib
from multiprocessing.connection import Connection

import psutil
import zmq

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.pose_maps import render_pose_maps
from animax_addon.core.protocol import (
    PNG_SIGNATURE, PROTOCOL_VERSION, Message, MessageType, decode, encode, png_blob,
)
from animax_addon.core.rig import Rig
from backend.worker.security import link_keys

RIG = {"bones": [
    {"name": "root", "parent": None, "head": [0, 0, 0], "tail": [0, 0, 0.5]},
    {"name": "arm", "parent": "root", "head": [0, 0, 0.5], "tail": [0.4, 0, 0.8]},
    {"name": "head", "parent": "root", "head": [0, 0, 0.5], "tail": [0, 0, 1.0]},
]}
SIZE = 32
PLAN = ["valid", "schema", "valid", "preset", "cancel_queued", "valid", "gone", "too_large", "valid",
        "cancel_running", "preset", "valid", "gone", "schema", "valid", "cancel_queued", "preset",
        "too_large", "gone", "cancel_running"]
FINAL = {MessageType.RESULT, MessageType.ERROR, MessageType.CANCELLED}
BEAT_S = 0.25  # a waiting client's heartbeat, well inside the broker's --client-liveness
NO_ANSWER_S = 120.0  # a job that hears nothing this long is counted as unanswered


def options(steps=1, frames=1) -> dict:
    return dict(steps=steps, guidance=3.0, seed=0, frames=frames, fps=16.0, outputs=["pose"], variations=1)


def submit_body(size=SIZE, **changes) -> tuple[dict, tuple[bytes, ...]]:
    rig = Rig.from_dict(RIG)
    cameras = make_camera_rig(*rig.bounding_sphere(), size)
    templates = render_pose_maps(cameras, rig.joints_rest[None], rig.joint_parents)[:, 0]
    body = {"prompt": "the fox jumps", "rig": RIG, "cameras": cameras.to_dict(), "options": options(**changes),
            "templates": list(range(len(templates)))}
    return body, tuple(png_blob(image) for image in templates)


def header_only_png(width: int, height: int) -> bytes:
    """A PNG of a few bytes that declares ``width`` x ``height`` pixels (its IHDR, then IEND)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


class Requests:
    """The frames of every kind of request, made once."""

    def __init__(self) -> None:
        self.body, self.blobs = submit_body()
        self.too_many_steps = submit_body(steps=81)
        self.too_many_frames = submit_body(frames=21)
        self.too_big_cameras = submit_body(size=128)

    def submit(self, job: str, **option_changes) -> list[bytes]:
        body = dict(self.body, options=dict(self.body["options"], **option_changes))
        return encode(Message(MessageType.SUBMIT, job, body, self.blobs))

    def raw(self, job, body: dict, v=PROTOCOL_VERSION, blobs=None) -> list[bytes]:
        """A SUBMIT's frames without the protocol's checks, so that it can break them."""
        blobs = self.blobs if blobs is None else blobs
        header = {"v": v, "type": "submit", "job": job, "body": body, "blobs": len(blobs)}
        return [json.dumps(header).encode(), *blobs]

    def schema(self, job: str, variant: int) -> list[bytes]:
        options_ = dict(self.body["options"], steps=0)
        return [self.raw(job, dict(self.body, options=options_)),
                self.raw(job, dict(self.body, colour="red")),
                [b"{not json", *self.blobs],
                self.raw(job, self.body, v=PROTOCOL_VERSION - 1),
                self.raw("../" + job, self.body)][variant % 5]

    def preset(self, job: str, variant: int) -> list[bytes]:
        body, blobs = (self.too_many_steps, self.too_many_frames, self.too_big_cameras)[variant % 3]
        return encode(Message(MessageType.SUBMIT, job, body, blobs))

    def too_large(self, job: str, variant: int) -> list[bytes] | None:
        """Frames answered ``too_large`` or ``bad_field``; None for the 17 MiB frame (sent apart)."""
        if variant % 4 == 0:
            return self.raw(job, self.body, blobs=self.blobs + (b"",) * 1096)  # 1101 frames
        if variant % 4 == 1:
            return self.raw(job, dict(self.body, prompt="x" * 70_000))
        if variant % 4 == 2:
            return self.raw(job, self.body, blobs=self.blobs[:3] + (header_only_png(4096, 4096),))
        return None


class Peer:
    """One client connection: a DEALER that beats while it waits, as the add-on's client does."""

    def __init__(self, address: str):
        self.address = address
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)

    def close(self) -> None:
        self.sock.close(0)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def until(self, job: str, kinds: set[MessageType]) -> Message | None:
        """The first message of one of ``kinds`` (or a final one) for ``job``, or an ERROR without a
        job (a request refused before its id was read); None after ``NO_ANSWER_S`` of silence."""
        heard = next_beat = time.monotonic()
        while time.monotonic() - heard < NO_ANSWER_S:
            if self.sock.poll(BEAT_S * 1000):
                message = decode(self.sock.recv_multipart())
                heard = time.monotonic()
                if message.job == job and (message.type in kinds or message.type in FINAL):
                    return message
                if message.job is None and message.type == MessageType.ERROR:
                    return message
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + BEAT_S
                self.send(encode(Message(MessageType.HEARTBEAT)))
        return None


def outcome(message: Message | None) -> str:
    if message is None:
        return "no answer"
    if message.type == MessageType.ERROR:
        return f"error {message.body['code']}"
    return message.type.value


def run_one(kind: str, i: int, peer: Peer, requests: Requests) -> tuple[str, Peer]:
    """Run job ``i`` of ``kind`` from ``peer``; the outcome and the peer to go on with."""
    turn = i % len(PLAN)  # variants go round by this kind's own count, not by the plan's rounds
    job, variant = f"j{i}", i // len(PLAN) * PLAN.count(kind) + PLAN[:turn].count(kind)
    if kind == "valid":
        peer.send(requests.submit(job))
    elif kind == "schema":
        peer.send(requests.schema(job, variant))
    elif kind == "preset":
        peer.send(requests.preset(job, variant))
    elif kind == "too_large":
        frames = requests.too_large(job, variant)
        if frames is None:  # libzmq closes this connection unanswered: a connection of its own
            huge = Peer(peer.address)
            huge.send(requests.raw(job, requests.body, blobs=requests.blobs[:3] + (bytes(17 * 2**20),)))
            huge.sock.close(5000)  # the frame still leaves
            return "dropped unanswered", peer
        peer.send(frames)
    elif kind in ("cancel_queued", "cancel_running"):
        running = kind == "cancel_running"
        peer.send(requests.submit(job, steps=4 if running else 1))
        first = peer.until(job, {MessageType.PROGRESS if running else MessageType.ACCEPTED})
        if first is None or first.type in FINAL:
            return f"{outcome(first)} before the cancel", peer
        peer.send(encode(Message(MessageType.CANCEL, job)))
    elif kind == "gone":
        gone = Peer(peer.address)
        long_job = variant % 10 == 9
        gone.send(requests.submit(job, steps=40 if long_job else 1))
        wait_for = MessageType.PROGRESS if variant % 2 else MessageType.ACCEPTED
        reply = gone.until(job, {wait_for})
        gone.close()  # no cancel, no more heartbeats
        return f"gone after {outcome(reply)}" + (" (40 steps)" if long_job else ""), peer
    return outcome(peer.until(job, set())), peer


def broker_process(addresses: Connection, keys, liveness_s: float) -> None:
    from backend.worker.broker import Broker

    broker = Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", worker_secret=str(keys.broker_secret),
                    worker_allow=str(keys.allow), queue_size=16, liveness_s=liveness_s)
    addresses.send((broker.address, broker.backend))
    broker.run()


def worker_process(backend, keys) -> None:
    import torch

    from backend.model.loading import build_tiny_pipeline
    from backend.worker.server import Worker

    torch.set_num_threads(1)  # tiny tensors: a second thread only waits at barriers while the clients run
    Worker(build_tiny_pipeline(), backend, server_public_key=str(keys.broker_public),
           client_secret_file=str(keys.worker_secret)).run()


def wait_for_worker(address: str) -> None:
    peer = Peer(address)
    try:
        while True:
            peer.send(encode(Message(MessageType.HELLO, None, {"client": "soak", "version": "0"})))
            if peer.sock.poll(5000) and decode(peer.sock.recv_multipart()).type == MessageType.WELCOME:
                return
            time.sleep(0.5)
    finally:
        peer.close()


def mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=4, help="client threads sending jobs at once")
    parser.add_argument("--warmup", type=int, default=1000, help="jobs before the RSS baseline (at most a fifth)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between RSS samples")
    parser.add_argument("--client-liveness", type=float, default=1.5,
                        help="seconds of silence before the broker drops a client's jobs (its default is 5)")
    args = parser.parse_args()
    warmup = min(args.warmup, args.jobs // 5)
    requests = Requests()
    spawn = mp.get_context("spawn")  # fresh interpreters: no ZeroMQ context crosses a fork
    with tempfile.TemporaryDirectory() as folder:
        keys = link_keys(folder)
        addresses, sender = spawn.Pipe(duplex=False)
        broker = spawn.Process(target=broker_process, args=(sender, keys, args.client_liveness), daemon=True)
        broker.start()
        if not addresses.poll(120):
            raise RuntimeError("the broker did not start within 120 s")
        address, backend = addresses.recv()
        worker = spawn.Process(target=worker_process, args=(backend, keys), daemon=True)
        worker.start()
        try:
            wait_for_worker(address)
            soak(args, warmup, requests, address, {"broker": psutil.Process(broker.pid),
                                                   "worker": psutil.Process(worker.pid)})
        finally:
            for process in (worker, broker):
                process.terminate()
                process.join()


def soak(args, warmup: int, requests: Requests, address: str, processes: dict[str, psutil.Process]) -> None:
    counter, done = itertools.count(), itertools.count(1)
    finished = 0
    outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
    lock = threading.Lock()
    warm = threading.Event()

    def client_loop():
        nonlocal finished
        peer = Peer(address)
        try:
            while (i := next(counter)) < args.jobs:
                kind = PLAN[i % len(PLAN)]
                result, peer = run_one(kind, i, peer, requests)
                if result == "no answer":  # start afresh: the connection may be the one at fault
                    peer.close()
                    peer = Peer(address)
                with lock:
                    outcomes[kind, result] += 1
                    finished = next(done)
                    if finished == warmup:
                        warm.set()
        finally:
            peer.close()

    samples: list[tuple[float, int, float, float]] = []  # (seconds, jobs finished, broker MB, worker MB)
    start = time.monotonic()

    def sample():
        samples.append((time.monotonic() - start, finished, *(mb(p) for p in processes.values())))

    sample()
    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    baseline = None
    while any(thread.is_alive() for thread in threads):
        time.sleep(args.interval)
        sample()
        if baseline is None and warm.is_set():
            baseline = samples[-1]
    elapsed = time.monotonic() - start
    time.sleep(args.client_liveness + 2)  # the silent clients forgotten, their jobs cancelled
    sample()
    baseline = baseline or samples[-1]
    after = [s for s in samples if s[1] >= baseline[1]]
    print(f"{args.jobs} jobs, {args.threads} client threads, warm-up {warmup} jobs; {elapsed:.0f} s, "
          f"{args.jobs / elapsed:.1f} jobs/s\n")
    print("| process | RSS before the first job (MB) | after the warm-up (MB) | at the end (MB) "
          "| most after the warm-up (MB) | end - warm-up (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for column, name in enumerate(processes, start=2):
        first, base, last, most = samples[0][column], baseline[column], samples[-1][column], \
            max(s[column] for s in after)
        print(f"| {name} | {first:.0f} | {base:.0f} | {last:.0f} | {most:.0f} | {last - base:+.0f} |")
    print("\n| kind | outcome | jobs |\n| --- | --- | ---: |")
    for (kind, result), count in sorted(outcomes.items()):
        print(f"| {kind} | {result} | {count} |")
    print("\n| seconds | jobs finished | broker MB | worker MB |\n| ---: | ---: | ---: | ---: |")
    for row in samples[:: max(1, len(samples) // 20)] + samples[-1:]:
        print(f"| {row[0]:.0f} | {row[1]} | {row[2]:.0f} | {row[3]:.0f} |")


if __name__ == "__main__":
    main()

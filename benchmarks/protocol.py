"""Protocol overhead and broker dispatch rate, with a pipeline that returns fixed videos at once.

    .venv/bin/python benchmarks/protocol.py [--jobs 200] [--clients 16] [--size 32] [--frames 5]

1. Overhead per job: the client's round trip (submit to result) minus the worker's own compute
   time (its diagnostics: preparing the inputs, the "pipeline", reconstruction), one job at a time,
   to a standalone worker (its broker in the same process, the worker over inproc) and through a
   broker to a worker over CurveZMQ on loopback. Everything runs in this process.
2. Dispatch rate: ``--clients`` clients, each submitting jobs back to back through one broker,
   with 1, 2 and 4 workers; the broker and every worker run in their own processes. Once with
   stand-in workers that answer every job at once with a canned real result (the broker's own
   rate), once with real workers around the fixed pipeline (reconstruction included, so on few
   cores the CPU bounds it). Prints Markdown tables.

The fixed videos are the rig's rest pose drawn as pose maps, so reconstruction does real work
and the result is a real RESULT message (5 arrays + 4 x frames PNGs).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import threading
import time

import numpy as np

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.client import Client, curve_keys
from animax_addon.core.pose_maps import render_pose_maps
from animax_addon.core.protocol import MessageType
from animax_addon.core.request import Options, Request
from animax_addon.core.rig import Rig
from backend.model.pipeline_animax import AnimaXPipelineOutput
from backend.worker.security import LinkKeys, link_keys

RIG = {"bones": [
    {"name": "root", "parent": None, "head": [0, 0, 0], "tail": [0, 0, 0.5]},
    {"name": "arm", "parent": "root", "head": [0, 0, 0.5], "tail": [0.4, 0, 0.8]},
    {"name": "head", "parent": "root", "head": [0, 0, 0.5], "tail": [0, 0, 1.0]},
]}


class FixedPipeline:
    """Stands in for the model: returns the rest pose's pose maps for every frame of every
    variation (one generator each), immediately."""

    def __call__(self, *, pose_templates, num_frames, generator, **_):
        videos = np.repeat(pose_templates[None, :, None], num_frames, axis=2)
        return AnimaXPipelineOutput(pose_videos=np.repeat(videos, len(generator), axis=0), rgb_videos=None)


def job_request(size: int, frames: int) -> Request:
    rig = Rig.from_dict(RIG)
    center, radius = rig.bounding_sphere()
    cameras = make_camera_rig(center, radius, size)
    templates = render_pose_maps(cameras, rig.joints_rest[None], rig.joint_parents)[:, 0]
    return Request.from_images("bench", RIG, cameras.to_dict(), templates,
                               Options(steps=1, guidance=3.0, seed=0, frames=frames, fps=16.0))


def run_one(client: Client, request: Request) -> tuple[float, float]:
    """(round trip, worker compute) seconds of one job."""
    start = time.perf_counter()
    job = client.submit(request)
    for message in client.events(job):
        pass
    elapsed = time.perf_counter() - start
    assert message.type == MessageType.RESULT, message
    return elapsed, sum(message.body["diagnostics"]["seconds"].values())


def serve_thread(service):
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    return thread


def broker_keys(keys: LinkKeys) -> dict:
    return dict(worker_secret=str(keys.broker_secret), worker_allow=str(keys.allow))


def worker_keys(keys: LinkKeys) -> dict:
    return dict(server_public_key=str(keys.broker_public), client_secret_file=str(keys.worker_secret))


def overhead(jobs: int, request: Request, keys: LinkKeys) -> None:
    from backend.worker.broker import Broker
    from backend.worker.server import Worker
    from backend.worker.standalone import Standalone

    print("| path | round trip ms (median) | worker compute ms | overhead ms (median) | overhead ms (p90) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    worker = Standalone(FixedPipeline(), "tcp://127.0.0.1:*")
    broker = Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", **broker_keys(keys))
    behind = Worker(FixedPipeline(), broker.backend, **worker_keys(keys))
    services = [worker, broker, behind]
    threads = [serve_thread(s) for s in services]
    while broker.worker_count() < 1:
        time.sleep(0.01)
    for name, address in (("standalone worker", worker.address), ("through broker", broker.address)):
        with Client(address) as client:
            for _ in range(5):  # warm-up
                run_one(client, request)
            samples = [run_one(client, request) for _ in range(jobs)]
        trip = [t * 1e3 for t, _ in samples]
        extra = sorted((t - c) * 1e3 for t, c in samples)
        print(f"| {name} | {statistics.median(trip):.2f} | {statistics.median(c * 1e3 for _, c in samples):.2f} "
              f"| {statistics.median(extra):.2f} | {extra[int(0.9 * len(extra))]:.2f} |")
    for service, thread in zip(services, threads):
        service.stop()
        thread.join(30)


def broker_process(queue, ready, keys):
    from backend.worker.broker import Broker

    broker = Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", queue_size=64, **broker_keys(keys))
    queue.put((broker.address, broker.backend))
    serve_thread(broker)
    ready.wait()
    while True:
        queue.put(broker.worker_count())
        time.sleep(0.05)


def worker_process(backend, keys, canned, request: Request):
    from backend.worker.server import Worker

    if not canned:
        Worker(FixedPipeline(), backend, **worker_keys(keys)).run()
        return
    # A stand-in worker with no compute at all: every submit gets the same (real) result at once,
    # so the rate is the broker's own (and the clients').
    import zmq

    from animax_addon.core.protocol import Message, decode, encode
    from backend.worker.jobs import run_job
    from backend.worker.server import preset_body
    from backend.model.presets import TINY

    result = run_job(FixedPipeline(), request.to_message("canned"), lambda *_: None, lambda: False)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve_keys(keys.broker_public,
                                                                                  keys.worker_secret)
    sock.connect(backend)
    sock.send_multipart(encode(Message(MessageType.READY, None, {
        "worker": "canned", "version": "0", "protocol": 1, "model": "tiny", "preset": preset_body(TINY)})))
    while True:
        if sock.poll(500):
            message = decode(sock.recv_multipart())
            if message.type == MessageType.SUBMIT:
                sock.send_multipart(encode(Message(MessageType.RESULT, message.job, result.body, result.blobs)))
        else:
            sock.send_multipart(encode(Message(MessageType.HEARTBEAT)))


def dispatch_rate(clients: int, jobs: int, workers: int, request: Request, canned: bool, keys: LinkKeys) -> float:
    spawn = mp.get_context("spawn")  # fresh interpreters: no ZeroMQ context crosses a fork
    queue, ready = spawn.Queue(), spawn.Event()
    processes = [spawn.Process(target=broker_process, args=(queue, ready, keys), daemon=True)]
    processes[0].start()
    address, backend = queue.get(timeout=120)
    processes += [spawn.Process(target=worker_process, args=(backend, keys, canned, request), daemon=True)
                  for _ in range(workers)]
    for process in processes[1:]:
        process.start()
    ready.set()
    while queue.get(timeout=120) < workers:
        pass
    per_client = max(1, jobs // clients)
    barrier = threading.Barrier(clients + 1)

    def client_loop():
        with Client(address, timeout_s=30) as client:
            barrier.wait()
            for _ in range(per_client):
                run_one(client, request)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    rate = clients * per_client / (time.perf_counter() - start)
    for process in processes:
        process.kill()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    request = job_request(args.size, args.frames)
    print(f"{args.size} px, {args.frames} frames, 4 views; {args.jobs} jobs\n")
    with tempfile.TemporaryDirectory() as folder:  # workers join a broker over CurveZMQ, as in animax-serve
        keys = link_keys(folder)
        overhead(args.jobs, request, keys)
        print(f"\n{args.clients} clients, {args.jobs} jobs through the broker\n")
        print("| workers | jobs/s, canned results (no compute) "
              "| jobs/s, fixed pipeline (reconstruction runs) |")
        print("| ---: | ---: | ---: |")
        for workers in args.workers:
            rates = [dispatch_rate(args.clients, args.jobs, workers, request, canned, keys) for canned in (True, False)]
            print(f"| {workers} | {rates[0]:.1f} | {rates[1]:.1f} |", flush=True)


if __name__ == "__main__":
    main()

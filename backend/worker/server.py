"""The worker: a ZeroMQ ROUTER socket, a fair bounded job queue and one compute thread.

Threads and sockets (ZeroMQ sockets are not thread-safe, so each is used by one thread only):

- the IO thread (``Worker.run``) owns the ROUTER and polls it together with an inproc PAIR
  socket. It decodes every request, keeps the queue (under ``_lock``), answers HELLO, SUBMIT,
  CANCEL and HEARTBEAT, sends heartbeats to clients with work and cancels the jobs of clients
  that went silent;
- the compute thread takes the next job from the queue (round robin over client identities:
  the client served least recently goes first), runs ``run_job`` and puts PROGRESS and the final
  message on ``_outbox`` (a ``queue.Queue``), then pokes its end of the PAIR so the IO thread
  wakes up and sends them.

Plain TCP is allowed on loopback only; a remote worker needs CurveZMQ, which is not built yet.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import logging
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import zmq

from animax_addon.core.protocol import (
    PROTOCOL_VERSION, ErrorCode, Limits, Message, MessageType, ProtocolError, decode, encode, error_message,
)

from .jobs import run_job

log = logging.getLogger("animax.worker")
DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
WORKER_VERSION = "0.1.0"
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


def check_address(address: str) -> None:
    """Refuse plain TCP on anything but loopback: remote workers need CurveZMQ (not built yet)."""
    if address.startswith(("ipc://", "inproc://")):
        return
    if not address.startswith("tcp://"):
        raise ValueError(f"unsupported worker address {address!r}; use tcp://127.0.0.1:<port>")
    host = address[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"refusing to serve plain TCP on {address!r}: only loopback (127.0.0.1) is allowed "
                         "without encryption, and a remote worker requires CurveZMQ, which this release "
                         "does not support yet")


@dataclass
class _Job:
    identity: bytes
    message: Message
    seq: int
    state: str = QUEUED
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def id(self) -> str:
        return self.message.job


class Worker:
    def __init__(self, pipeline, address: str = DEFAULT_ADDRESS, *, queue_size: int = 8,
                 heartbeat_s: float = 1.0, liveness_s: float = 5.0, name: str = "animax-worker",
                 model: str = "tiny", limits: Limits = Limits(), context: zmq.Context | None = None):
        check_address(address)
        self.pipeline = pipeline
        if hasattr(pipeline, "set_progress_bar_config"):
            pipeline.set_progress_bar_config(disable=True)
        self.queue_size, self.heartbeat_s, self.liveness_s = queue_size, heartbeat_s, liveness_s
        self.name, self.model, self.limits = name, model, limits
        self._context = context or zmq.Context.instance()
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.bind(address)
        self.address = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._wake_address = f"inproc://animax-worker-{id(self)}"
        self._wake = self._context.socket(zmq.PAIR)
        self._wake.bind(self._wake_address)
        self._outbox: queue.Queue[tuple[bytes, Message]] = queue.Queue()
        self._lock = threading.Condition()
        self._jobs: dict[tuple[bytes, str], _Job] = {}  # every job seen, by (client identity, job id)
        self._pending: dict[bytes, deque[_Job]] = {}  # queued jobs per client
        self._last_served: dict[bytes, int] = {}
        self._seq = itertools.count()
        self._served = itertools.count()
        self._last_seen: dict[bytes, float] = {}
        self.started: list[str] = []  # job ids in the order they started running (introspection)
        self._stop = threading.Event()
        self._compute = threading.Thread(target=self._compute_loop, name="animax-compute", daemon=True)

    # --- public ----------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for job in self._jobs.values():
                job.cancel.set()
            self._lock.notify_all()

    def job_states(self) -> dict[str, str]:
        """{job id: queued | running | done | failed | cancelled}, for tests and logs."""
        with self._lock:
            return {job.id: job.state for job in self._jobs.values()}

    def run(self) -> None:
        """The IO loop; returns after ``stop()``, closing the sockets."""
        self._compute.start()
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        next_beat = time.monotonic() + self.heartbeat_s
        try:
            while not self._stop.is_set():
                timeout = max(0.0, min(next_beat - time.monotonic(), 0.1))
                events = dict(poller.poll(timeout * 1000))
                if self._wake in events:
                    while self._wake.poll(0):
                        self._wake.recv()
                if self._router in events:
                    for _ in range(100):  # bounded: outgoing messages get their turn
                        try:
                            frames = self._router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._receive(frames)
                self._flush_outbox()
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + self.heartbeat_s
                    self._heartbeats(now)
        finally:
            self.stop()
            self._compute.join(timeout=30)
            self._flush_outbox()
            self._router.close(0)
            self._wake.close(0)

    # --- IO thread --------------------------------------------------------------------------------
    def _send(self, identity: bytes, message: Message) -> None:
        try:
            self._router.send_multipart([identity, *encode(message, self.limits)])
        except ProtocolError as exc:  # a result over the limits: tell the client instead
            log.error("cannot encode %s for %s: %s", message.type, message.job, exc.sentence)
            self._router.send_multipart([identity, *encode(error_message(exc.code, exc.sentence, message.job))])

    def _flush_outbox(self) -> None:
        while True:
            try:
                identity, message = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._send(identity, message)

    def _receive(self, frames: list[bytes]) -> None:
        identity, frames = frames[0], frames[1:]
        self._last_seen[identity] = time.monotonic()
        try:
            message = decode(frames, self.limits)
        except ProtocolError as exc:
            self._send(identity, error_message(exc.code, exc.sentence))
            return
        kind = message.type
        if kind == MessageType.HELLO:
            self._send(identity, Message(MessageType.WELCOME, None, {
                "worker": self.name, "version": WORKER_VERSION, "protocol": PROTOCOL_VERSION, "model": self.model}))
        elif kind == MessageType.HEARTBEAT:
            self._send(identity, Message(MessageType.HEARTBEAT))
        elif kind == MessageType.SUBMIT:
            self._submit(identity, message)
        elif kind == MessageType.CANCEL:
            self._cancel(identity, message.job)
        else:
            self._send(identity, error_message(ErrorCode.UNEXPECTED, f"A worker does not accept "
                                               f"'{kind.value}' messages.", message.job))

    def _submit(self, identity: bytes, message: Message) -> None:
        with self._lock:
            old = self._jobs.get((identity, message.job))
            if old is not None and old.state in (QUEUED, RUNNING):
                reply = error_message(ErrorCode.UNEXPECTED, f"Job '{message.job}' is already queued or "
                                      "running; use a new job id.", message.job)
            elif sum(len(q) for q in self._pending.values()) >= self.queue_size:
                reply = error_message(ErrorCode.QUEUE_FULL, ErrorCode.QUEUE_FULL.sentence, message.job)
            else:
                job = _Job(identity, message, next(self._seq))
                self._jobs[(identity, job.id)] = job
                self._pending.setdefault(identity, deque()).append(job)
                order = self._schedule()
                reply = Message(MessageType.ACCEPTED, job.id, {"position": order.index(job)})
                self._lock.notify_all()
        self._send(identity, reply)

    def _cancel(self, identity: bytes, job_id: str, reason: str = "") -> None:
        with self._lock:
            job = self._jobs.get((identity, job_id))
            if job is None or job.state not in (QUEUED, RUNNING):
                reply = error_message(ErrorCode.UNEXPECTED, f"There is no queued or running job '{job_id}' "
                                      "to cancel.", job_id)
            elif job.state == QUEUED:
                self._pending[identity].remove(job)
                job.state = CANCELLED
                job.cancel.set()
                reply = Message(MessageType.CANCELLED, job_id)
            else:
                job.cancel.set()  # the compute thread sees it after the current step and replies
                reply = None
        if reason:
            log.info("cancelled job %s: %s", job_id, reason)
        if reply is not None:
            self._send(identity, reply)

    def _heartbeats(self, now: float) -> None:
        with self._lock:
            active: dict[bytes, list[str]] = {}
            for job in self._jobs.values():
                if job.state in (QUEUED, RUNNING):
                    active.setdefault(job.identity, []).append(job.id)
        for identity, jobs in active.items():
            if now - self._last_seen.get(identity, now) > self.liveness_s:
                for job_id in jobs:
                    self._cancel(identity, job_id, reason="the client stopped answering")
            else:
                self._send(identity, Message(MessageType.HEARTBEAT))

    # --- queue (under _lock) -----------------------------------------------------------------------
    def _schedule(self) -> list[_Job]:
        """The queued jobs in the order they will run: each turn goes to the client served least
        recently (never served first), ties to the client whose oldest job came first."""
        pending = {who: list(jobs) for who, jobs in self._pending.items() if jobs}
        served = dict(self._last_served)
        order, turn = [], 0
        while pending:
            who = min(pending, key=lambda w: (served.get(w, -1), pending[w][0].seq))
            order.append(pending[who].pop(0))
            served[who] = 10**12 + turn
            turn += 1
            if not pending[who]:
                del pending[who]
        return order

    def _next_job(self) -> _Job | None:
        with self._lock:
            while not self._stop.is_set():
                order = self._schedule()
                if order:
                    job = order[0]
                    self._pending[job.identity].remove(job)
                    self._last_served[job.identity] = next(self._served)
                    job.state = RUNNING
                    self.started.append(job.id)
                    return job
                self._lock.wait(0.5)
        return None

    # --- compute thread ----------------------------------------------------------------------------
    def _compute_loop(self) -> None:
        wake = self._context.socket(zmq.PAIR)
        wake.setsockopt(zmq.LINGER, 0)
        wake.connect(self._wake_address)

        def post(identity: bytes, message: Message) -> None:
            self._outbox.put((identity, message))
            try:
                wake.send(b"", zmq.NOBLOCK)
            except zmq.Again:  # the IO thread has wake-ups pending already
                pass

        try:
            while (job := self._next_job()) is not None:
                started = time.monotonic()

                def progress(stage: str, step: int, total: int, job=job, started=started) -> None:
                    eta = None
                    if stage == "denoise" and step > 0:
                        eta = (time.monotonic() - started) / step * (total - step)
                    post(job.identity, Message(MessageType.PROGRESS, job.id,
                                               {"stage": stage, "step": step, "total": total, "eta_s": eta}))

                try:
                    reply = run_job(self.pipeline, job.message, progress, job.cancel.is_set)
                except Exception:  # noqa: BLE001 - a bug must not kill the worker
                    log.exception("job %s failed", job.id)
                    reply = error_message(ErrorCode.INTERNAL, ErrorCode.INTERNAL.sentence, job.id)
                with self._lock:
                    job.state = {MessageType.RESULT: DONE, MessageType.CANCELLED: CANCELLED}.get(reply.type, FAILED)
                post(job.identity, reply)
        finally:
            wake.close(0)


def serve(address: str, pipeline, **options) -> None:
    """Run a worker until SIGINT or SIGTERM."""
    worker = Worker(pipeline, address, **options)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: worker.stop())
    log.info("AnimaX worker listening on %s", worker.address)
    worker.run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="animax-worker", description="Run the AnimaX generation worker.")
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help="ZeroMQ address to bind (loopback only until CurveZMQ lands)")
    parser.add_argument("--model", choices=["tiny"], default="tiny",
                        help="only 'tiny' for now: a randomly initialised tiny model (trained weights are "
                             "not shipped yet, so its motions are noise)")
    parser.add_argument("--queue-size", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        check_address(args.address)
    except ValueError as exc:
        parser.error(str(exc))
    from backend.model.presets import build_tiny_pipeline

    log.warning("model 'tiny' is randomly initialised: trained weights are not shipped yet")
    serve(args.address, build_tiny_pipeline(), queue_size=args.queue_size)


if __name__ == "__main__":
    main()

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

Plain TCP is allowed on loopback only; a remote worker needs CurveZMQ (``security.py``). Behind a
broker (``--broker``) the worker connects a DEALER instead of binding, always over CurveZMQ with
keys of its own: the broker is then its one "client", it announces itself with READY, heartbeats
the broker all the time and reconnects (a fresh socket, READY again) when the broker has been
silent for ``BROKER_LIVENESS`` beats.
"""

from __future__ import annotations

import itertools
import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass, field

import zmq

from animax_addon.core.client import DEFAULT_ADDRESS, curve_keys
from animax_addon.core.protocol import (
    PROTOCOL_VERSION, ErrorCode, Limits, Message, MessageType, ProtocolError, Receiver, encode, error_message,
)
from backend.model import MODEL_FPS, TINY, Preset

from .fair_queue import CANCELLED, DONE, FAILED, FINISHED_HISTORY, QUEUED, RUNNING, FairQueue, History, admit
from .security import Authenticator, check_address

log = logging.getLogger("animax.worker")
WORKER_VERSION = "0.1.0"
BROKER_LIVENESS = 3  # heartbeats the broker may miss before the worker reconnects
BROKER_KEYS_HINT = ("pass --server-key BROKER.key (the broker's public key) and --client-key WORKER.key_secret "
                    "(this worker's, its WORKER.key in the broker's --allow-workers folder)")
BROKER = b"broker"  # the broker's identity in the worker's tables (a DEALER sees no identities)
FINAL_LINGER_MS = 1000  # how long closing waits for replies still queued in the socket


def preset_body(preset: Preset) -> dict:
    """The welcome/ready ``preset`` field: the model's generation defaults."""
    return {"name": preset.name, "size": preset.size, "frames": preset.num_frames,
            "steps": preset.num_inference_steps, "guidance": preset.guidance_scale, "fps": MODEL_FPS,
            "joints": preset.max_joints}


@dataclass(eq=False)
class _Job:
    client: bytes
    message: Message
    seq: int
    state: str = QUEUED
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def id(self) -> str:
        return self.message.job


class Worker:
    """Serves jobs on ``address`` (a bound ROUTER), or for the broker at ``broker`` (a DEALER).

    With ``curve_secret`` and ``allow`` the ROUTER is a CurveZMQ server (then any TCP address is
    allowed). A broker is always joined over CurveZMQ, as a client joins a server: with the
    broker's public key (``server_public_key``) and this worker's key pair
    (``client_secret_file``), whose public half is in the broker's allow-list of workers. The
    worker owns its ZeroMQ context (ZAP authentication is per context) and ends it when ``run``
    returns, which waits until the last replies have left: a process may exit next.
    """

    def __init__(self, pipeline, address: str = DEFAULT_ADDRESS, *, queue_size: int = 8,
                 heartbeat_s: float = 1.0, liveness_s: float = 5.0, name: str = "animax-worker",
                 preset: Preset = TINY, limits: Limits = Limits(),
                 broker: str | None = None, curve_secret: str | None = None, allow: str | None = None,
                 server_public_key: str | None = None, client_secret_file: str | None = None):
        curve = curve_secret is not None or allow is not None
        if curve and (curve_secret is None or allow is None):
            raise ValueError("CurveZMQ needs both --curve-secret and --allow")
        if broker is None:
            check_address(address, curve)
        elif server_public_key is None or client_secret_file is None:
            raise ValueError(f"a worker joins its broker over CurveZMQ: {BROKER_KEYS_HINT}")
        else:
            self._broker_keys = curve_keys(server_public_key, client_secret_file)
        self.pipeline = pipeline
        if hasattr(pipeline, "set_progress_bar_config"):
            pipeline.set_progress_bar_config(disable=True)
        self.queue_size, self.heartbeat_s, self.liveness_s = queue_size, heartbeat_s, liveness_s
        self.name, self.preset, self.limits = name, preset, limits
        self.broker = broker
        self._context = zmq.Context()
        self._auth = Authenticator(self._context) if curve else None
        if broker is None:
            self._socket = self._context.socket(zmq.ROUTER)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.MAXMSGSIZE, limits.max_part_bytes)
            if curve:
                self._auth.serve(self._socket, curve_secret, allow, "clients")
            self._socket.bind(address)
            self.address = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
            self._receiver = Receiver(self._socket, limits, route=1)
        else:
            self._socket = self._connect_broker()
            self.address = broker
        self._wake_address = f"inproc://animax-worker-{id(self)}"
        self._wake = self._context.socket(zmq.PAIR)
        self._wake.bind(self._wake_address)
        self._outbox: queue.Queue[tuple[bytes, Message]] = queue.Queue()
        self._lock = threading.Condition()
        self._jobs: dict[tuple[bytes, str], _Job] = {}  # queued and running, by (client identity, job id)
        self._finished = History()
        self._queue = FairQueue()
        self._seq = itertools.count()
        self._last_seen: dict[bytes, float] = {BROKER: time.monotonic()} if broker else {}
        self.started: list[str] = []  # the last job ids in the order they started running (introspection)
        self._stop = threading.Event()
        self._compute = threading.Thread(target=self._compute_loop, name="animax-compute", daemon=True)

    def _welcome_body(self) -> dict:
        return {"worker": self.name, "version": WORKER_VERSION, "protocol": PROTOCOL_VERSION,
                "model": self.preset.name, "preset": preset_body(self.preset)}

    def _connect_broker(self) -> zmq.Socket:
        socket = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, self.limits.max_part_bytes)
        socket.curve_serverkey, socket.curve_publickey, socket.curve_secretkey = self._broker_keys
        socket.connect(self.broker)
        try:  # no connection (a failed handshake can end it at once): READY goes again on reconnecting
            socket.send_multipart(encode(Message(MessageType.READY, None, self._welcome_body())), zmq.NOBLOCK)
        except zmq.Again:
            pass
        self._receiver = Receiver(socket, self.limits)
        return socket

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
            return self._finished.states() | {job.id: job.state for job in self._jobs.values()}

    def run(self) -> None:
        """The IO loop; returns after ``stop()``, closing the sockets."""
        self._compute.start()
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        if self._auth is not None:
            poller.register(self._auth.socket, zmq.POLLIN)
        next_beat = time.monotonic() + self.heartbeat_s
        try:
            while not self._stop.is_set():
                timeout = max(0.0, min(next_beat - time.monotonic(), 0.1))
                events = dict(poller.poll(timeout * 1000))
                if self._auth is not None and self._auth.socket in events:
                    self._auth.handle()
                if self._wake in events:
                    while self._wake.poll(0):
                        self._wake.recv()
                if self._socket in events:
                    for _ in range(100):  # bounded: outgoing messages and heartbeats get their turn
                        received = self._receiver.receive()
                        if received is None:  # none waiting, or a long message to go on with next time
                            break
                        route, message = received
                        self._receive(route[0] if route else BROKER, message)
                self._flush_outbox()
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + self.heartbeat_s
                    self._heartbeats(now)
                    if self.broker is not None and not self._receiver.reading \
                            and now - self._last_seen[BROKER] > BROKER_LIVENESS * self.heartbeat_s:
                        self._reconnect_broker(poller)
        finally:
            self.stop()
            self._compute.join(timeout=30)
            self._flush_outbox()
            # A moment's linger, so that the last replies (a job failed by the stop itself) leave
            # before the socket goes; with 0 they are dropped whenever the stop comes first.
            self._socket.close(FINAL_LINGER_MS)
            self._wake.close(0)
            if self._auth is not None:
                self._auth.close()
            if self._compute.is_alive():  # stuck in a call: term() would wait for its socket forever
                log.error("the compute thread did not stop within 30 s; leaving its socket open")
            else:
                # Only term() waits for the linger: without it, a process that exits right after
                # (a view-parallel worker whose follower died) can drop the job's error reply.
                self._context.term()

    # --- IO thread --------------------------------------------------------------------------------
    def _reconnect_broker(self, poller: zmq.Poller) -> None:
        """Paranoid Pirate: a fresh socket and READY again (its jobs were cancelled as a silent client's)."""
        log.warning("the broker at %s stopped answering (or refuses this worker's key); reconnecting", self.broker)
        with self._lock:
            jobs = [job.id for job in self._jobs.values() if job.client == BROKER]
        for job_id in jobs:  # the broker re-queues them elsewhere; never finish them twice
            self._cancel(BROKER, job_id, reason="the broker stopped answering")
        poller.unregister(self._socket)
        self._socket.close(0)
        self._socket = self._connect_broker()
        poller.register(self._socket, zmq.POLLIN)
        self._last_seen[BROKER] = time.monotonic()

    def _send(self, identity: bytes, message: Message) -> None:
        route = [] if self.broker is not None else [identity]
        try:
            frames = encode(message, self.limits)
        except ProtocolError as exc:  # a result over the limits: tell the client instead
            log.error("cannot encode %s for %s: %s", message.type, message.job, exc.sentence)
            frames = encode(error_message(exc.code, exc.sentence, message.job))
        try:
            self._socket.send_multipart(route + frames, zmq.NOBLOCK)
        except zmq.Again:  # a DEALER without a connection: the broker is gone or refused this worker's key
            log.debug("no connection to the broker; dropped %s for %s", message.type.value, message.job)

    def _flush_outbox(self) -> None:
        while True:
            try:
                identity, message = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._send(identity, message)

    def _receive(self, identity: bytes, message: Message | ProtocolError) -> None:
        self._last_seen[identity] = time.monotonic()
        if isinstance(message, ProtocolError):
            self._send(identity, error_message(message.code, message.sentence))
            return
        kind = message.type
        if kind == MessageType.HELLO:
            self._send(identity, Message(MessageType.WELCOME, None, self._welcome_body()))
        elif kind == MessageType.HEARTBEAT:
            if self.broker is None:  # the broker beats on its own clock; answering would double it
                self._send(identity, Message(MessageType.HEARTBEAT))
        elif kind == MessageType.SUBMIT:
            self._submit(identity, message)
        elif kind == MessageType.CANCEL:
            self._cancel(identity, message.job)
        elif self.broker is not None:  # e.g. the broker refusing this worker: never answer it back
            log.error("the broker sent %s: %s", kind.value, message.body.get("message", message.body))
        else:
            self._send(identity, error_message(ErrorCode.UNEXPECTED, f"A worker does not accept "
                                               f"'{kind.value}' messages.", message.job))

    def _submit(self, identity: bytes, message: Message) -> None:
        with self._lock:
            reply = admit(self._queue, self._jobs, self.queue_size, identity, message,
                          lambda: _Job(identity, message, next(self._seq)))
            if reply.type == MessageType.ACCEPTED:
                self._lock.notify_all()
        self._send(identity, reply)

    def _cancel(self, identity: bytes, job_id: str, reason: str = "") -> None:
        with self._lock:
            job = self._jobs.get((identity, job_id))
            if job is None:
                reply = self._finished.cannot_cancel(identity, job_id)
            elif job.state == QUEUED:
                self._queue.remove(job)
                self._finished.finish(self._jobs, job, CANCELLED)
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
            active: dict[bytes, list[str]] = {BROKER: []} if self.broker is not None else {}
            for job in self._jobs.values():
                active.setdefault(job.client, []).append(job.id)
        # While a long message is read, every other peer's messages wait behind it: no silence counts.
        deaf = self._receiver.reading
        for identity, jobs in active.items():
            if not deaf and now - self._last_seen.get(identity, now) > self.liveness_s:
                for job_id in jobs:
                    self._cancel(identity, job_id, reason="the client stopped answering")
            else:
                self._send(identity, Message(MessageType.HEARTBEAT))
        for identity in [i for i, seen in self._last_seen.items() if i not in active and now - seen > self.liveness_s]:
            del self._last_seen[identity]  # a client without jobs is remembered only while it talks

    # --- queue ------------------------------------------------------------------------------------
    def _next_job(self) -> _Job | None:
        with self._lock:
            while not self._stop.is_set():
                job = self._queue.pop()
                if job is not None:
                    job.state = RUNNING
                    self.started.append(job.id)
                    del self.started[:-FINISHED_HISTORY]
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

        from .jobs import run_job  # torch and the reconstruction: off the path of argument errors

        try:
            while (job := self._next_job()) is not None:
                started = time.monotonic()

                def progress(stage: str, step: int, total: int, job=job, started=started) -> None:
                    eta = None
                    if stage == "denoise" and step > 0:
                        eta = (time.monotonic() - started) / step * (total - step)
                    post(job.client, Message(MessageType.PROGRESS, job.id,
                                               {"stage": stage, "step": step, "total": total, "eta_s": eta}))

                try:
                    reply = run_job(self.pipeline, job.message, progress, job.cancel.is_set, self.preset)
                except Exception:  # noqa: BLE001 - a bug must not kill the worker
                    log.exception("job %s failed", job.id)
                    reply = error_message(ErrorCode.INTERNAL, ErrorCode.INTERNAL.sentence, job.id)
                with self._lock:
                    state = {MessageType.RESULT: DONE, MessageType.CANCELLED: CANCELLED}.get(reply.type, FAILED)
                    self._finished.finish(self._jobs, job, state)
                post(job.client, reply)
        finally:
            wake.close(0)


def serve(address: str, pipeline, **options) -> None:
    """Run a worker until SIGINT or SIGTERM."""
    worker = Worker(pipeline, address, **options)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: worker.stop())
    where = f"serving the broker at {worker.broker}" if worker.broker else f"listening on {worker.address}"
    log.info("AnimaX worker (%s) %s", worker.preset.name, where)
    worker.run()

"""The worker: a DEALER that serves one broker, and one compute thread (the ZeroMQ guide's
Paranoid Pirate worker, chapter 4).

A worker faces no client: the broker (``broker.py``) alone does (welcome, admission, the fair
queue, client liveness). A standalone ``animax-worker`` runs a broker in front of its worker in
the same process (``standalone.py``).

Threads and sockets (ZeroMQ sockets are not thread-safe, so each is used by one thread only):

- the IO thread (``Worker.run``) owns the DEALER and polls it together with an inproc PAIR
  socket. It says READY on connecting, hands each SUBMIT to the compute thread, flags a CANCEL,
  and heartbeats the broker every ``heartbeat_s``. When the broker has been silent for
  ``BROKER_LIVENESS`` beats, it gives up its jobs (the broker re-queues them elsewhere), waits,
  and connects a fresh socket that says READY again; the wait doubles from ``RECONNECT_FIRST_S``
  to ``RECONNECT_MOST_S`` while the broker stays silent, and starts over once it is heard;
- the compute thread runs ``run_job`` on each job in turn and puts PROGRESS and the final
  message on ``_outbox`` (a ``queue.Queue``), then pokes its end of the PAIR so the IO thread
  wakes up and sends them.

A broker elsewhere is joined over CurveZMQ, as a client joins a server: with the broker's public
key (``server_public_key``) and this worker's key pair (``client_secret_file``), whose public half
is in the broker's allow-list of workers. A broker in this process (an ``inproc://`` address of
the shared ``context``) is joined without: nothing outside the process can reach that endpoint.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import zmq

from animax_addon.core.client import curve_keys
from animax_addon.core.protocol import (
    PROTOCOL_VERSION, ErrorCode, Limits, Message, MessageType, ProtocolError, Receiver, encode, error_message,
)
from backend.model import MODEL_FPS, TINY, Preset

log = logging.getLogger("animax.worker")
WORKER_VERSION = "0.1.0"
BROKER_LIVENESS = 3  # heartbeats the broker may miss before the worker reconnects
RECONNECT_FIRST_S, RECONNECT_MOST_S = 1.0, 32.0  # the back-off before reconnecting, as the guide's ppworker
BROKER_KEYS_HINT = ("pass --server-key BROKER.key (the broker's public key) and --client-key WORKER.key_secret "
                    "(this worker's, its WORKER.key in the broker's --allow-workers folder)")
FINAL_LINGER_MS = 1000  # how long closing waits for replies still queued in the socket


def preset_body(preset: Preset) -> dict:
    """The welcome/ready ``preset`` field: the model's generation defaults."""
    return {"name": preset.name, "size": preset.size, "frames": preset.num_frames,
            "steps": preset.num_inference_steps, "guidance": preset.guidance_scale, "fps": MODEL_FPS,
            "joints": preset.max_joints}


def welcome_body(name: str, preset: dict) -> dict:
    """The body of a WELCOME (a broker's, to clients) and of a READY (a worker's, to its broker)."""
    return {"worker": name, "version": WORKER_VERSION, "protocol": PROTOCOL_VERSION, "model": preset["name"],
            "preset": preset}


@dataclass(eq=False)
class _Job:
    message: Message  # the broker's SUBMIT, under the broker's job id
    cancel: threading.Event = field(default_factory=threading.Event)
    abandoned: bool = False  # given up on reconnecting: the broker it came from has it re-queued

    @property
    def id(self) -> str:
        return self.message.job


class Worker:
    """Runs the jobs of the broker at ``broker``, one at a time.

    The worker owns its ZeroMQ context unless given one (``context``: the in-process broker's,
    which an ``inproc://`` broker address needs); it ends the context it owns when ``run``
    returns, which waits until the last replies have left: a process may exit next.
    """

    def __init__(self, pipeline, broker: str, *, heartbeat_s: float = 1.0, name: str = "animax-worker",
                 preset: Preset = TINY, limits: Limits = Limits(), server_public_key: str | None = None,
                 client_secret_file: str | None = None, context: zmq.Context | None = None):
        if broker.startswith("inproc://"):
            if context is None:
                raise ValueError("an inproc:// broker lives in this process: pass its context")
            self._keys = None  # no CurveZMQ: nothing outside this process can reach an inproc endpoint
        elif server_public_key is None or client_secret_file is None:
            raise ValueError(f"a worker joins its broker over CurveZMQ: {BROKER_KEYS_HINT}")
        else:
            self._keys = curve_keys(server_public_key, client_secret_file)
        self.pipeline = pipeline
        if hasattr(pipeline, "set_progress_bar_config"):
            pipeline.set_progress_bar_config(disable=True)
        self.broker, self.heartbeat_s, self.name, self.preset, self.limits = broker, heartbeat_s, name, preset, limits
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._wake_address = f"inproc://animax-worker-wake-{id(self)}"
        self._wake = self._context.socket(zmq.PAIR)
        self._wake.bind(self._wake_address)
        self._outbox: queue.Queue[tuple[_Job, Message]] = queue.Queue()
        self._lock = threading.Condition()
        self._jobs: dict[str, _Job] = {}  # given and not finished, by the broker's job id
        self._pending: deque[_Job] = deque()  # given and not started
        self._backoff_s = RECONNECT_FIRST_S
        self._socket = self._connect()
        self._stop = threading.Event()
        self._compute = threading.Thread(target=self._compute_loop, name="animax-compute", daemon=True)

    def _connect(self) -> zmq.Socket:
        socket = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, self.limits.max_part_bytes)
        if self._keys is not None:
            socket.curve_serverkey, socket.curve_publickey, socket.curve_secretkey = self._keys
        socket.connect(self.broker)
        self._receiver = Receiver(socket, self.limits)
        self._last_heard = time.monotonic()
        try:  # no connection (a failed handshake can end it at once): READY goes again on reconnecting
            socket.send_multipart(encode(Message(MessageType.READY, None, welcome_body(
                self.name, preset_body(self.preset)))), zmq.NOBLOCK)
        except zmq.Again:
            pass
        return socket

    # --- public ----------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for job in self._jobs.values():
                job.cancel.set()
            self._lock.notify_all()

    @property
    def stuck(self) -> bool:
        """Whether the compute thread outlived ``run`` (stuck in a call): its socket is still open,
        so the context cannot be ended."""
        return self._compute.is_alive()

    def run(self) -> None:
        """The IO loop; returns after ``stop()``, closing the sockets."""
        self._compute.start()
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        next_beat = time.monotonic() + self.heartbeat_s
        try:
            while not self._stop.is_set():
                timeout = max(0.0, min(next_beat - time.monotonic(), 0.1))
                events = dict(poller.poll(timeout * 1000))
                if self._wake in events:
                    while self._wake.poll(0):
                        self._wake.recv()
                if self._socket in events:
                    for _ in range(100):  # bounded: outgoing messages and heartbeats get their turn
                        received = self._receiver.receive()
                        if received is None:  # none waiting, or a long message to go on with next time
                            break
                        self._receive(received[1])
                self._flush_outbox()
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + self.heartbeat_s
                    self._send(Message(MessageType.HEARTBEAT))
                    # While a long message is read, what the broker sent after it waits behind it.
                    if not self._receiver.reading and now - self._last_heard > BROKER_LIVENESS * self.heartbeat_s:
                        self._reconnect(poller)
        finally:
            self.stop()
            self._compute.join(timeout=30)
            self._flush_outbox()
            # A moment's linger, so that the last replies (a job failed by the stop itself) leave
            # before the socket goes; with 0 they are dropped whenever the stop comes first.
            self._socket.close(FINAL_LINGER_MS)
            self._wake.close(0)
            if self.stuck:  # term() would wait for its socket forever
                log.error("the compute thread did not stop within 30 s; leaving its socket open")
            elif self._own_context:
                # Only term() waits for the linger: without it, a process that exits right after
                # (a view-parallel worker whose follower died) can drop the job's error reply.
                self._context.term()

    # --- IO thread --------------------------------------------------------------------------------
    def _reconnect(self, poller: zmq.Poller) -> None:
        """Paranoid Pirate: give up the jobs, wait, and a fresh socket says READY again."""
        log.warning("the broker at %s stopped answering (or refuses this worker's key); reconnecting in %g s",
                    self.broker, self._backoff_s)
        with self._lock:
            for job in self._jobs.values():  # the broker re-queues them: never finish them twice
                job.abandoned = True
                job.cancel.set()
            self._jobs.clear()
            self._pending.clear()
        poller.unregister(self._socket)
        self._socket.close(0)
        self._stop.wait(self._backoff_s)
        self._backoff_s = min(2 * self._backoff_s, RECONNECT_MOST_S)
        self._socket = self._connect()
        poller.register(self._socket, zmq.POLLIN)

    def _send(self, message: Message) -> None:
        try:
            frames = encode(message, self.limits)
        except ProtocolError as exc:  # a result over the limits: tell the client instead
            log.error("cannot encode %s for %s: %s", message.type, message.job, exc.sentence)
            frames = encode(error_message(exc.code, exc.sentence, message.job))
        try:
            self._socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:  # no connection: the broker is gone or refused this worker's key
            log.debug("no connection to the broker; dropped %s for %s", message.type.value, message.job)

    def _flush_outbox(self) -> None:
        while True:
            try:
                job, message = self._outbox.get_nowait()
            except queue.Empty:
                return
            if not job.abandoned:
                self._send(message)

    def _receive(self, message: Message | ProtocolError) -> None:
        self._last_heard = time.monotonic()
        self._backoff_s = RECONNECT_FIRST_S
        # Never answer the broker with an error: its answer could come back, and so on.
        if isinstance(message, ProtocolError):
            log.warning("dropped a malformed message from the broker: %s", message.sentence)
        elif message.type == MessageType.SUBMIT:
            with self._lock:
                job = _Job(message)
                self._jobs[job.id] = job
                self._pending.append(job)
                self._lock.notify_all()
        elif message.type == MessageType.CANCEL:
            with self._lock:
                job = self._jobs.get(message.job)
            if job is not None:  # the compute thread answers CANCELLED, after the current step if running
                job.cancel.set()
        elif message.type == MessageType.ERROR:  # e.g. the broker refusing this worker's preset
            log.error("the broker sent an error: %s", message.body["message"])
        elif message.type != MessageType.HEARTBEAT:
            log.warning("ignored a %s message from the broker", message.type.value)

    # --- compute thread ----------------------------------------------------------------------------
    def _next_job(self) -> _Job | None:
        with self._lock:
            while not self._stop.is_set():
                if self._pending:
                    return self._pending.popleft()
                self._lock.wait(0.5)
        return None

    def _compute_loop(self) -> None:
        wake = self._context.socket(zmq.PAIR)
        wake.setsockopt(zmq.LINGER, 0)
        wake.connect(self._wake_address)

        def post(job: _Job, message: Message) -> None:
            self._outbox.put((job, message))
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
                    post(job, Message(MessageType.PROGRESS, job.id,
                                      {"stage": stage, "step": step, "total": total, "eta_s": eta}))

                if job.cancel.is_set():  # cancelled before it started
                    reply = Message(MessageType.CANCELLED, job.id)
                else:
                    try:
                        reply = run_job(self.pipeline, job.message, progress, job.cancel.is_set, self.preset,
                                        self.limits)
                    except Exception:  # noqa: BLE001 - a bug must not kill the worker
                        log.exception("job %s failed", job.id)
                        reply = error_message(ErrorCode.INTERNAL, ErrorCode.INTERNAL.sentence, job.id)
                with self._lock:
                    if self._jobs.get(job.id) is job:  # not given up on reconnecting
                        del self._jobs[job.id]
                post(job, reply)
        finally:
            wake.close(0)


"""The broker: the one side that faces clients, in front of one or more workers (the ZeroMQ
guide's Paranoid Pirate queue, chapter 4).

Clients talk to the broker's frontend ROUTER (docs/protocol.md): hello is answered with the
workers' common preset, submit is checked against that preset's limits (``check_job_size``),
queued in a fair bounded queue (``FairQueue``, with a cap per client) and answered with its
position, cancel is answered at once for a queued job and forwarded to the worker of a running
one. Workers connect a DEALER to the backend ROUTER (``server.py``: ``animax-worker --broker
ADDRESS``, or the one behind a standalone ``animax-worker``, ``standalone.py``) and announce
themselves with ``ready``; the broker gives each idle worker one job at a time under a job id of
its own (client job ids are only unique per client) and forwards the worker's progress and final
message back under the client's job id, only from the worker the job went to.

The backend is a CurveZMQ server with an allow-list of worker keys (``--worker-secret``,
``--allow-workers``): a worker reads every job it is given, and what it answers goes to clients,
so a process that is not a listed worker gets no handshake, hence no message through, at all.
Only an ``inproc://`` backend, which nothing outside the process can reach, goes without.
A worker is bound to the key it joined with: a message from its routing identity that came with
another key (a listed worker that took the identity over once the first had gone) is dropped.

Liveness, both ways: the broker sends ``heartbeat`` every ``heartbeat_s`` to every worker and to
every client with a queued or running job. A client's heartbeat only shows it alive and is never
answered, so a client whose job this broker does not have (a restarted one) hears nothing and
reports the worker gone. A worker silent for ``worker_liveness`` beats is dropped; its running job
is re-queued once (to run on another worker) and otherwise reported as ``worker_lost``. A client
silent for ``liveness_s`` has its queued jobs dropped and its running jobs cancelled on their
workers. One thread owns both sockets and answers their ZAP requests; nothing is shared.
"""

from __future__ import annotations

import itertools
import logging
import signal
import threading
import time
from dataclasses import dataclass

import zmq

from animax_addon.core.client import DEFAULT_ADDRESS
from animax_addon.core.protocol import (
    ErrorCode, Limits, Message, MessageType, ProtocolError, Receiver, encode, error_message,
)
from backend.arguments import ArgumentParser, curve_files_problem, number, zmq_address

from .fair_queue import CANCELLED, DONE, FAILED, FINISHED_HISTORY, QUEUED, RUNNING, FairQueue, History, admit
from .job_limits import JobInputError, check_job_size
from .security import KEYGEN_HINT, Authenticator, check_address
from .server import FINAL_LINGER_MS, welcome_body

log = logging.getLogger("animax.broker")
DEFAULT_BACKEND = "tcp://127.0.0.1:5556"
WORKER_KEYS_NEEDED = (f"workers join a broker over CurveZMQ only: pass --worker-secret BROKER.key_secret and "
                      f"--allow-workers DIR_OF_WORKER_KEYS ({KEYGEN_HINT})")
MAX_ATTEMPTS = 2  # a job whose worker dies runs once more, on another worker, then is reported
_FINAL_STATES = {MessageType.RESULT: DONE, MessageType.CANCELLED: CANCELLED, MessageType.ERROR: FAILED}


@dataclass(eq=False)
class _Job:
    client: bytes
    message: Message  # the client's SUBMIT, under the client's job id
    seq: int
    state: str = QUEUED
    worker: bytes | None = None
    wire: str | None = None  # the job id the running worker knows it by
    attempts: int = 0
    cancelling: bool = False

    @property
    def id(self) -> str:
        return self.message.job


@dataclass(eq=False)
class _Worker:
    identity: bytes
    key: str | None  # the CURVE key (Z85) its READY came with: its identity names a connection only
    last_seen: float
    idle_since: float
    job: _Job | None = None


class Broker:
    """Clients on ``address``, workers on ``backend``.

    ``worker_secret`` and ``worker_allow`` (no defaults: no broker without them) make the backend
    a CurveZMQ server for the listed workers; they may be None for an ``inproc://`` backend only.
    ``preset``: the workers' preset body when known before any joins (a standalone worker's), so
    that clients are welcomed at once. The broker owns its ZeroMQ context unless given one
    (``context``: shared with an in-process worker, whose inproc endpoint is per context).
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, backend: str = DEFAULT_BACKEND, *,
                 worker_secret: str | None, worker_allow: str | None, queue_size: int = 8, heartbeat_s: float = 1.0,
                 liveness_s: float = 5.0, worker_liveness: int = 3, name: str = "animax-broker",
                 limits: Limits = Limits(), curve_secret: str | None = None, allow: str | None = None,
                 preset: dict | None = None, context: zmq.Context | None = None):
        curve = curve_secret is not None or allow is not None
        if curve and (curve_secret is None or allow is None):
            raise ValueError("CurveZMQ needs both --curve-secret and --allow")
        check_address(address, curve)
        if not backend.startswith("inproc://") and (worker_secret is None or worker_allow is None):
            raise ValueError(WORKER_KEYS_NEEDED)
        check_address(backend, curve=True)
        self.queue_size, self.heartbeat_s, self.liveness_s = queue_size, heartbeat_s, liveness_s
        self.worker_liveness_s = worker_liveness * heartbeat_s
        self.name, self.limits = name, limits
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context  # ZAP is per context
        self._auth = Authenticator(self._context)
        self._frontend = self._context.socket(zmq.ROUTER)
        self._backend = self._context.socket(zmq.ROUTER)
        for socket in (self._frontend, self._backend):
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.MAXMSGSIZE, limits.max_part_bytes)
        try:
            if worker_secret is not None:
                self._auth.serve(self._backend, worker_secret, worker_allow, "workers", peers="worker")
            if curve:
                self._auth.serve(self._frontend, curve_secret, allow, "clients")
            self._frontend.bind(address)
            self._backend.bind(backend)
        except (ValueError, zmq.ZMQError):
            self._close()
            raise
        self.address = self._frontend.getsockopt_string(zmq.LAST_ENDPOINT)
        self.backend = self._backend.getsockopt_string(zmq.LAST_ENDPOINT)
        self._receivers = {socket: Receiver(socket, limits, route=1) for socket in (self._frontend, self._backend)}
        self._jobs: dict[tuple[bytes, str], _Job] = {}  # queued and running, by (client identity, job id)
        self._finished = History()
        self._wire: dict[str, _Job] = {}  # running jobs by the id their worker knows
        self._wire_ids = itertools.count()
        self._seq = itertools.count()
        self._queue = FairQueue()
        self._workers: dict[bytes, _Worker] = {}
        self._preset = preset  # given, or the first worker's; later workers must match it
        self._client_seen: dict[bytes, float] = {}
        self.started: list[str] = []  # the last client job ids in dispatch order (introspection)
        self._lock = threading.Lock()  # guards the introspection reads from other threads
        self._stop = threading.Event()

    # --- public ----------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def job_states(self) -> dict[str, str]:
        """{client job id: queued | running | done | failed | cancelled}, for tests and logs."""
        with self._lock:
            return self._finished.states() | {job.id: job.state for job in self._jobs.values()}

    def worker_count(self) -> int:
        with self._lock:
            return len(self._workers)

    def run(self) -> None:
        """The IO loop; returns after ``stop()``, closing the sockets."""
        poller = zmq.Poller()
        poller.register(self._frontend, zmq.POLLIN)
        poller.register(self._backend, zmq.POLLIN)
        poller.register(self._auth.socket, zmq.POLLIN)
        next_beat = time.monotonic() + self.heartbeat_s
        try:
            while not self._stop.is_set():
                timeout = max(0.0, min(next_beat - time.monotonic(), 0.1))
                events = dict(poller.poll(timeout * 1000))
                if self._auth.socket in events:
                    self._auth.handle()
                with self._lock:
                    for socket, handle in ((self._backend, self._from_worker), (self._frontend, self._from_client)):
                        if socket in events:
                            for _ in range(100):  # bounded: the other socket and heartbeats get their turn
                                received = self._receivers[socket].receive()
                                if received is None:  # none waiting, or a long message to go on with next time
                                    break
                                route, message = received
                                handle(route[0], message)
                    now = time.monotonic()
                    if now >= next_beat:
                        next_beat = now + self.heartbeat_s
                        self._heartbeats(now)
                    self._dispatch()
            with self._lock:  # what workers sent before the stop (a job failed by it) still goes out
                while (received := self._receivers[self._backend].receive(budget=None)) is not None:
                    self._from_worker(received[0][0], received[1])
        finally:
            self._close()

    def _close(self) -> None:
        # A moment's linger, so that the last replies leave; the context's term() waits for it.
        self._frontend.close(FINAL_LINGER_MS)
        self._backend.close(0)
        self._auth.close()
        if self._own_context:
            self._context.term()

    # --- sending ---------------------------------------------------------------------------------
    def _to_client(self, client: bytes, message: Message) -> None:
        try:
            frames = encode(message, self.limits)
        except ProtocolError as exc:
            frames = encode(error_message(exc.code, exc.sentence, message.job))
        self._frontend.send_multipart([client, *frames])

    def _to_worker(self, worker: bytes, message: Message) -> None:
        self._backend.send_multipart([worker, *encode(message, self.limits)])

    # --- clients ---------------------------------------------------------------------------------
    def _from_client(self, client: bytes, message: Message | ProtocolError) -> None:
        self._client_seen[client] = time.monotonic()
        if isinstance(message, ProtocolError):
            self._to_client(client, error_message(message.code, message.sentence))
            return
        kind = message.type
        if kind == MessageType.HELLO:
            if self._preset is None:
                self._to_client(client, error_message(
                    ErrorCode.MODEL_UNAVAILABLE, f"No worker has connected to the broker yet; start one with "
                    f"'animax-worker --broker {self.backend} --server-key BROKER.key --client-key WORKER.key_secret'."))
            else:
                self._to_client(client, Message(MessageType.WELCOME, None, welcome_body(self.name, self._preset)))
        elif kind == MessageType.HEARTBEAT:
            pass  # it shows the client alive; the broker beats clients with jobs on its own clock
        elif kind == MessageType.SUBMIT:
            self._submit(client, message)
        elif kind == MessageType.CANCEL:
            self._cancel(client, message.job)
        else:
            self._to_client(client, error_message(ErrorCode.UNEXPECTED, f"A worker does not accept "
                                                  f"'{kind.value}' messages.", message.job))

    def _submit(self, client: bytes, message: Message) -> None:
        preset = self._preset
        if preset is not None:  # refused here, not queued for a worker that would refuse it
            try:
                check_job_size(message.body, preset["name"], preset["size"], preset["frames"], preset["steps"],
                               self.limits)
            except JobInputError as exc:
                self._to_client(client, error_message(ErrorCode.BAD_FIELD, str(exc), message.job))
                return
        self._to_client(client, admit(self._queue, self._jobs, self.queue_size, client, message,
                                      lambda: _Job(client, message, next(self._seq))))

    def _cancel(self, client: bytes, job_id: str, reason: str = "") -> None:
        job = self._jobs.get((client, job_id))
        if reason:
            log.info("cancelling job %s: %s", job_id, reason)
        if job is None:
            self._to_client(client, self._finished.cannot_cancel(client, job_id))
        elif job.state == QUEUED:
            self._queue.remove(job)
            self._finished.finish(self._jobs, job, CANCELLED)
            self._to_client(client, Message(MessageType.CANCELLED, job_id))
        elif not job.cancelling:  # the worker answers CANCELLED after its current step
            job.cancelling = True
            self._to_worker(job.worker, Message(MessageType.CANCEL, job.wire))

    # --- workers ---------------------------------------------------------------------------------
    def _from_worker(self, identity: bytes, message: Message | ProtocolError) -> None:
        # Never answer a worker's message with an error: its reply would come back, and so on.
        if isinstance(message, ProtocolError):
            log.warning("dropped a malformed message from a worker: %s", message.sentence)
            return
        now = time.monotonic()
        worker = self._workers.get(identity)
        key = self._receivers[self._backend].user_id
        if worker is not None and key != worker.key:
            log.warning("dropped a %s from worker %s: it came with key %s..., not %s... the worker joined with",
                        message.type.value, identity.hex(), (key or "none")[:8], (worker.key or "none")[:8])
            return
        if message.type == MessageType.READY:
            self._ready(identity, key, message.body, now)
            return
        if worker is None:  # e.g. from before this broker restarted: it will time out and send READY
            return
        worker.last_seen = now
        job = self._wire.get(message.job) if message.job is not None else None
        if job is None or job.worker != identity:
            if message.type == MessageType.ERROR:
                log.warning("worker %s: %s", identity.hex(), message.body["message"])
            return
        if message.type == MessageType.PROGRESS:
            self._to_client(job.client, Message(MessageType.PROGRESS, job.id, message.body))
        elif message.type in _FINAL_STATES:
            self._to_client(job.client, Message(message.type, job.id, message.body, message.blobs))
            self._finished.finish(self._jobs, job, _FINAL_STATES[message.type])
            self._release(worker, now)

    def _ready(self, identity: bytes, key: str | None, welcome: dict, now: float) -> None:
        preset = welcome["preset"]
        if self._preset is not None and preset != self._preset:
            log.error("refused worker %s: its preset %s differs from %s", identity.hex(), preset, self._preset)
            self._to_worker(identity, error_message(ErrorCode.BAD_FIELD, f"This broker serves preset "
                                                    f"{self._preset}; start the worker with the same model."))
            return
        self._preset = preset
        old = self._workers.pop(identity, None)
        if old is not None and old.job is not None:  # it restarted mid-job
            self._lost(old)
        self._workers[identity] = _Worker(identity, key, now, now)
        log.info("worker %s ready (%s); %d workers", identity.hex(), welcome["worker"], len(self._workers))

    def _release(self, worker: _Worker, now: float) -> None:
        del self._wire[worker.job.wire]
        worker.job = None
        worker.idle_since = now

    def _lost(self, worker: _Worker) -> None:
        """``worker`` is gone mid-job: run its job once more elsewhere, or tell the client."""
        job = worker.job
        del self._wire[job.wire]
        worker.job = None
        if job.cancelling:
            self._finished.finish(self._jobs, job, CANCELLED)
            self._to_client(job.client, Message(MessageType.CANCELLED, job.id))
        elif job.attempts < MAX_ATTEMPTS:
            log.warning("worker %s lost job %s; re-queueing it", worker.identity.hex(), job.id)
            job.state, job.worker, job.wire = QUEUED, None, None
            self._queue.push(job)  # its old seq keeps it ahead of its client's later jobs
        else:
            self._finished.finish(self._jobs, job, FAILED)
            self._to_client(job.client, error_message(ErrorCode.WORKER_LOST, ErrorCode.WORKER_LOST.sentence, job.id))

    def _dispatch(self) -> None:
        idle = sorted((w for w in self._workers.values() if w.job is None), key=lambda w: w.idle_since)
        for worker in idle:
            job = self._queue.pop()
            if job is None:
                return
            job.state, job.worker, job.wire = RUNNING, worker.identity, f"b{next(self._wire_ids)}"
            job.attempts += 1
            worker.job = job
            self._wire[job.wire] = job
            self.started.append(job.id)
            del self.started[:-FINISHED_HISTORY]
            self._to_worker(worker.identity, Message(MessageType.SUBMIT, job.wire, job.message.body,
                                                     job.message.blobs))

    # --- liveness ----------------------------------------------------------------------------------
    def _heartbeats(self, now: float) -> None:
        # While a long message is read on a socket, every other peer's messages on it wait behind
        # it: no silence there counts.
        deaf_to_workers, deaf_to_clients = (self._receivers[s].reading for s in (self._backend, self._frontend))
        for worker in list(self._workers.values()):
            if not deaf_to_workers and now - worker.last_seen > self.worker_liveness_s:
                log.warning("worker %s stopped answering; dropping it", worker.identity.hex())
                del self._workers[worker.identity]
                if worker.job is not None:
                    self._lost(worker)
            else:
                self._to_worker(worker.identity, Message(MessageType.HEARTBEAT))
        active: dict[bytes, list[str]] = {}
        for job in self._jobs.values():
            active.setdefault(job.client, []).append(job.id)
        for client, jobs in active.items():
            if not deaf_to_clients and now - self._client_seen.get(client, now) > self.liveness_s:
                for job_id in jobs:
                    self._cancel(client, job_id, reason="the client stopped answering")
            else:
                self._to_client(client, Message(MessageType.HEARTBEAT))
        for client in [c for c, seen in self._client_seen.items() if c not in active and now - seen > self.liveness_s]:
            del self._client_seen[client]  # a client without jobs is remembered only while it talks


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="animax-broker",
                            description="One address in front of several AnimaX workers (one per GPU).")
    parser.add_argument("--address", type=zmq_address, default=DEFAULT_ADDRESS,
                        help="address for clients; off loopback only with --curve-secret and --allow")
    parser.add_argument("--workers", type=zmq_address, default=DEFAULT_BACKEND,
                        help="address the workers connect to (animax-worker --broker ADDRESS), always CurveZMQ")
    parser.add_argument("--worker-secret", help="the broker's NAME.key_secret for its workers (animax-worker keygen; "
                                                "may be the same as --curve-secret); required")
    parser.add_argument("--allow-workers", help="folder of the worker public keys (*.key) allowed to join; required")
    parser.add_argument("--queue-size", type=number(minimum=1), default=8)
    parser.add_argument("--curve-secret", help="the broker's NAME.key_secret (animax-worker keygen): turns on CurveZMQ")
    parser.add_argument("--allow", help="folder of the client public keys (*.key) allowed to connect")
    args = parser.parse_args(argv)
    if not (args.worker_secret and args.allow_workers):
        parser.error(f"{WORKER_KEYS_NEEDED}; animax-serve makes them itself")
    for problem in (curve_files_problem(args.worker_secret, args.allow_workers, "worker"),
                    curve_files_problem(args.curve_secret, args.allow)):
        if problem:
            parser.error(problem)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        broker = Broker(args.address, args.workers, worker_secret=args.worker_secret, worker_allow=args.allow_workers,
                        queue_size=args.queue_size, curve_secret=args.curve_secret, allow=args.allow)
    except (ValueError, zmq.ZMQError) as exc:
        parser.error(str(exc))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: broker.stop())
    log.info("AnimaX broker: clients on %s, workers on %s", broker.address, broker.backend)
    broker.run()


if __name__ == "__main__":
    main()

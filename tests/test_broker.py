"""The broker over real sockets on 127.0.0.1: clients see a worker; jobs spread over in-process workers."""

import contextlib
import itertools
import logging
import threading
import time

import numpy as np
import pytest
import zmq
import zmq.auth

from animax_addon.core.client import Client, curve_keys, result_arrays
from animax_addon.core.protocol import (
    PROTOCOL_VERSION, ErrorCode, Limits, Message, MessageType, ProtocolError, decode, encode, error_message, png_blob,
)
from backend.model.loading import build_tiny_pipeline
from backend.model.presets import TINY
from backend.worker import jobs, server
from backend.worker.broker import Broker
from backend.worker.security import keygen, link_keys, load_keys
from backend.worker.server import Worker, preset_body
from backend.worker.standalone import Standalone
from test_worker import (
    FRAMES, LONG_JOB, TEMPLATES, cancel_once_running, empty_frame_floods_beside_a_job, held_submits,
    one_client_cannot_fill_the_queue, preset_submit, submit, until,
)


@pytest.fixture(scope="module")
def pipelines():
    """One pipeline per worker: a diffusers pipeline keeps per-call state, so workers never share one."""
    return [build_tiny_pipeline() for _ in range(2)]


@pytest.fixture(scope="session")
def link(tmp_path_factory):
    """The keys of a broker's link to its workers, as animax-serve makes them."""
    return link_keys(tmp_path_factory.mktemp("link"))


def broker_keys(link) -> dict:
    return dict(worker_secret=str(link.broker_secret), worker_allow=str(link.allow))


def worker_keys(link) -> dict:
    return dict(server_public_key=str(link.broker_public), client_secret_file=str(link.worker_secret))


def dealer(address, keys=None) -> zmq.Socket:
    """A DEALER connected to ``address``; with ``keys`` (server public, own public, own secret) a CURVE client."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = keys
    sock.connect(address)
    return sock


def ready(preset=preset_body(TINY)) -> list[bytes]:
    body = {"worker": "fake", "version": "0", "protocol": 1, "model": preset["name"], "preset": preset}
    return encode(Message(MessageType.READY, None, body))


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def make_broker(pipelines, running, link):
    def make(workers=1, **kwargs):
        broker = running(Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", **broker_keys(link), **kwargs))
        for pipeline in pipelines[:workers]:
            running(Worker(pipeline, broker.backend, heartbeat_s=broker.heartbeat_s, **worker_keys(link)))
        wait_for(lambda: broker.worker_count() == workers)
        return broker

    return make


def test_broker_answers_like_a_worker(make_broker, pipelines):
    broker = make_broker()
    with Client(broker.address) as client:
        welcome = client.hello()
        assert welcome["preset"] == preset_body(TINY) and welcome["model"] == "tiny"
        assert welcome["protocol"] == PROTOCOL_VERSION
        job = submit(client)
        messages = list(client.events(job))
    assert messages[0].type == MessageType.ACCEPTED and messages[0].body["position"] == 0
    assert [m.body["step"] for m in messages if m.type == MessageType.PROGRESS and m.body["stage"] == "denoise"] \
        == [1, 2]
    assert messages[-1].type == MessageType.RESULT and messages[-1].job == job
    # The same job straight to a worker (same weights, same seed) gives the same arrays bit for bit.
    worker = Standalone(pipelines[1], "tcp://127.0.0.1:*")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with Client(worker.address) as client:
            direct = until(client, submit(client), MessageType.RESULT)[-1]
    finally:
        worker.stop()
        thread.join(30)
    (via_broker,), (straight,) = result_arrays(messages[-1]), result_arrays(direct)
    assert via_broker.keys() == straight.keys()
    for name in via_broker:
        np.testing.assert_array_equal(via_broker[name], straight[name])


def test_hello_without_workers_is_model_unavailable(make_broker):
    broker = make_broker(workers=0)
    with Client(broker.address, timeout_s=2) as client, pytest.raises(ProtocolError) as info:
        client.hello()
    assert info.value.code is ErrorCode.MODEL_UNAVAILABLE and broker.backend in str(info.value)


def test_only_listed_workers_join_and_a_rogue_ready_changes_nothing(make_broker, pipelines, running, link,
                                                                    tmp_path):
    broker = make_broker(workers=0, heartbeat_s=0.2)
    _, unlisted = keygen(tmp_path, "rogue")  # a key pair of its own, not in the broker's allow-list
    rogues = [dealer(broker.backend), dealer(broker.backend, curve_keys(link.broker_public, unlisted))]
    other_preset = dict(preset_body(TINY), size=2 * TINY.size)  # would lock the real workers out
    try:
        with Client(broker.address, timeout_s=2) as client:
            job = submit(client)
            until(client, job, MessageType.ACCEPTED)
            messages = (ready(other_preset), encode(Message(MessageType.HEARTBEAT)))
            for _ in range(10):  # READY and heartbeats again and again, as a worker keeps sending them
                for sock, frames in itertools.product(rogues, messages):
                    with contextlib.suppress(zmq.Again):  # no handshake, so at times no connection to queue on
                        sock.send_multipart(frames, zmq.NOBLOCK)
                time.sleep(0.2)
            with pytest.raises(ProtocolError) as info:
                client.hello()
            assert info.value.code is ErrorCode.MODEL_UNAVAILABLE  # no worker and no preset yet
            assert broker.worker_count() == 0 and broker.job_states()[job] == "queued"
            assert not any(sock.poll(0) for sock in rogues)  # no job, no answer, not even an error
            running(Worker(pipelines[0], broker=broker.backend, heartbeat_s=0.2, **worker_keys(link)))
            assert until(client, job, MessageType.RESULT)  # a listed worker joins and serves the job
            assert client.hello()["preset"] == preset_body(TINY)
        assert broker.started == [job]
    finally:
        for sock in rogues:
            sock.close(0)


def next_message(sock, timeout_s=60):
    """The next message on ``sock`` other than the broker's heartbeats, which come in between."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert sock.poll(max(0.0, deadline - time.monotonic()) * 1000), "no message"
        message = decode(sock.recv_multipart())
        if message.type != MessageType.HEARTBEAT:
            return message


def drained(sock) -> set[MessageType]:
    """The types of the messages waiting on ``sock``."""
    types = set()
    while sock.poll(0):
        types.add(decode(sock.recv_multipart()).type)
    return types


def test_a_job_is_talked_over_with_the_worker_it_went_to_only(make_broker, link):
    """A second listed worker (authenticated, so its messages reach the broker) that sends
    progress, a result, an error and a cancelled of another worker's job changes nothing: the
    client never sees them, the job stays with its worker, and the client's cancel goes to that
    worker only."""
    broker = make_broker(workers=0, worker_liveness=600)  # the fake workers below send no heartbeats
    keys = curve_keys(link.broker_public, link.worker_secret)
    chosen, other = dealer(broker.backend, keys), dealer(broker.backend, keys)
    pngs = (png_blob(TEMPLATES[0]),) * (4 * FRAMES)

    def result(job, sender):
        body = {"variations": 1, "arrays": {}, "videos": {"pose": list(range(len(pngs)))},
                "diagnostics": {"views": 4, "by": sender}}
        return encode(Message(MessageType.RESULT, job, body, pngs))

    def assignments():
        with broker._lock:
            return {identity: (worker.job, worker.key) for identity, worker in broker._workers.items()}, \
                {job.id: (job.state, job.worker, job.wire) for job in broker._jobs.values()}

    try:
        chosen.send_multipart(ready())
        wait_for(lambda: broker.worker_count() == 1)
        with Client(broker.address) as client:
            job = submit(client)
            work = next_message(chosen)
            assert work.type == MessageType.SUBMIT
            other.send_multipart(ready())
            wait_for(lambda: broker.worker_count() == 2)
            before = assignments()
            progress = {"stage": "denoise", "step": 1, "total": 2, "eta_s": None}
            for forged in (Message(MessageType.PROGRESS, work.job, progress),
                           error_message(ErrorCode.INTERNAL, "forged", work.job),
                           Message(MessageType.CANCELLED, work.job)):
                other.send_multipart(encode(forged))
            other.send_multipart(result(work.job, "other"))
            # A READY of another preset after them is refused with an error: when it comes, the
            # broker has handled the messages before it on that connection.
            other.send_multipart(ready(dict(preset_body(TINY), size=2 * TINY.size)))
            assert next_message(other).body["code"] == "bad_field"
            assert assignments() == before and broker.job_states()[job] == "running" and broker.started == [job]
            client.cancel(job)
            assert next_message(chosen) == Message(MessageType.CANCEL, work.job)
            chosen.send_multipart(result(work.job, "chosen"))  # it finished before it saw the cancel
            messages = until(client, job, MessageType.RESULT)
        assert drained(other) <= {MessageType.HEARTBEAT}  # no job and no cancel went to it
        assert [m.type for m in messages] == [MessageType.ACCEPTED, MessageType.RESULT]
        assert messages[-1].body["diagnostics"]["by"] == "chosen" and broker.job_states()[job] == "done"
    finally:
        chosen.close(0)
        other.close(0)


def test_a_listed_worker_cannot_take_over_another_workers_identity(running, link, tmp_path, caplog):
    allow = tmp_path / "allow"  # two listed workers, each with a key of its own
    allow.mkdir()
    keys = {}
    for name in ("first", "second"):
        public, keys[name] = keygen(tmp_path, name)
        (allow / public.name).write_bytes(public.read_bytes())
    # Never dropped for silence here, however slow the machine: the first's registration stays.
    broker = running(Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", worker_secret=str(link.broker_secret),
                            worker_allow=str(allow), heartbeat_s=0.2, worker_liveness=3000))
    progress = encode(Message(MessageType.PROGRESS, "b0", {"stage": "denoise", "step": 1, "total": 2,
                                                           "eta_s": None}))
    pngs = (png_blob(TEMPLATES[0]),) * (4 * FRAMES)

    def result(sender):
        body = {"variations": 1, "arrays": {}, "videos": {"pose": list(range(len(pngs)))},
                "diagnostics": {"views": 4, "by": sender}}
        return encode(Message(MessageType.RESULT, "b0", body, pngs))

    def dropped() -> list[str]:  # the message type of each dropped message, in order
        return [r.getMessage().split()[2] for r in caplog.records
                if r.name == "animax.broker" and r.getMessage().startswith("dropped a ")]

    def last_seen() -> float:
        with broker._lock:
            return broker._workers[b"first"].last_seen

    def as_first(name, heard) -> zmq.Socket:
        """A connection under the first worker's routing identity with ``name``'s key, once ``heard``."""
        # libzmq gives an identity to a new connection only after the old one has closed, and takes
        # a too early one's first message for its identity: try fresh ones until a heartbeat is heard.
        deadline = time.monotonic() + 30
        while True:
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.identity = b"first"
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = \
                curve_keys(link.broker_public, keys[name])
            sock.connect(broker.backend)
            sock.send_multipart(encode(Message(MessageType.HEARTBEAT)))
            attempt = time.monotonic() + 1
            while time.monotonic() < attempt:
                if heard():
                    return sock
                time.sleep(0.02)
            sock.close(0)
            assert time.monotonic() < deadline, f"{name} was never heard"

    caplog.set_level(logging.WARNING, logger="animax.broker")
    first = as_first("first", lambda: True)
    try:
        first.send_multipart(ready())
        wait_for(lambda: broker.worker_count() == 1)
        with Client(broker.address) as client:
            job = submit(client)
            assert first.poll(10_000) and decode(first.recv_multipart()).job == "b0"
            first.send_multipart(progress)
            assert until(client, job, MessageType.PROGRESS)[-1].body["step"] == 1
            first.close(0)  # gone, but registered until it has been silent for its liveness
            before = last_seen()
            second = as_first("second", lambda: bool(dropped()) or last_seen() > before)
            try:
                for frames in (progress, result("second"), ready(), ready(dict(preset_body(TINY), size=2 * TINY.size))):
                    second.send_multipart(frames)
                wait_for(lambda: dropped()[-4:] == ["progress", "result", "ready", "ready"]
                         or broker.job_states()[job] != "running")
            finally:
                second.close(0)
            assert broker.job_states()[job] == "running" and last_seen() == before
            assert set(dropped()[:-4]) == {"heartbeat"} and dropped()[-4:] == ["progress", "result", "ready", "ready"]
            line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("dropped a "))
            first_key, second_key = (zmq.auth.load_certificate(keys[name])[0].decode() for name in ("first", "second"))
            assert f"came with key {second_key[:8]}..., not {first_key[:8]}..." in line
            assert broker.worker_count() == 1 and broker._workers[b"first"].job is not None  # nothing re-queued
            first = as_first("first", lambda: last_seen() > before)  # the first worker back with its own key
            first.send_multipart(result("first"))
            messages = until(client, job, MessageType.RESULT)
        assert [m.type for m in messages] == [MessageType.RESULT]
        assert messages[-1].body["diagnostics"]["by"] == "first" and broker.job_states()[job] == "done"
        assert set(dropped()[:-4]) == {"heartbeat"}  # the first's messages were all taken
    finally:
        first.close(0)


@pytest.mark.parametrize("size, changes", [
    (TINY.size, dict(steps=LONG_JOB["steps"] + 1)),
    (TINY.size, dict(frames=TINY.num_frames + 4)),
    (2 * TINY.size, {}),
    (TINY.size, dict(views=30, frames=TINY.num_frames, outputs=("pose", "rgb"))),  # a result past 1023 blobs
])
def test_broker_refuses_a_job_past_its_workers_preset_as_the_worker_does(make_broker, link, size, changes):
    broker = make_broker(workers=0, worker_liveness=600, liveness_s=600)  # the fakes below send no heartbeats
    worker, client = dealer(broker.backend, curve_keys(link.broker_public, link.worker_secret)), dealer(broker.address)

    try:
        worker.send_multipart(ready())
        wait_for(lambda: broker.worker_count() == 1)
        too_large = preset_submit(size, **changes)
        client.send_multipart(encode(too_large))
        refusal = next_message(client)
        assert refusal.type == MessageType.ERROR and refusal.job == too_large.job
        assert refusal.body["code"] == "bad_field"
        assert refusal.body == jobs.run_job(None, too_large, lambda *a: None, lambda: False, TINY).body
        assert broker.job_states() == {} and broker.started == []
        at_limits = preset_submit(TINY.size, **LONG_JOB)
        client.send_multipart(encode(at_limits))
        accepted, work = next_message(client), next_message(worker)
        assert accepted.type == MessageType.ACCEPTED and accepted.job == at_limits.job
        assert work.type == MessageType.SUBMIT and work.body == at_limits.body  # the first job the worker is given
    finally:
        worker.close(0)
        client.close(0)


def test_broker_keeps_only_the_outcomes_of_its_last_finished_jobs(make_broker):
    broker = make_broker(workers=0)  # no worker: each job waits in the queue until cancelled
    broker._finished.size = 5
    ids = [f"q{i}" for i in range(15)]
    with Client(broker.address) as client:
        for job in ids:
            submit(client, job=job)
            until(client, job, MessageType.ACCEPTED)
            client.cancel(job)
            until(client, job, MessageType.CANCELLED)
        assert broker.job_states() == {job: "cancelled" for job in ids[10:]}
        with broker._lock:
            assert not broker._jobs
        assert held_submits(ids) == []
        client.cancel("q14")
        assert "already finished (cancelled)" in until(client, "q14", MessageType.ERROR)[-1].body["message"]


def test_broker_and_worker_sockets_drop_frames_over_the_protocol_limit(pipelines, running, link):
    limits = Limits(max_frame_bytes=64 * 1024)
    broker = running(Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", limits=limits, **broker_keys(link)))
    worker = running(Worker(pipelines[0], broker=broker.backend, limits=limits, **worker_keys(link)))
    for socket in (broker._frontend, broker._backend, worker._socket):
        assert socket.getsockopt(zmq.MAXMSGSIZE) == limits.max_part_bytes


def test_cancel_through_broker_within_one_step(make_broker):
    broker = make_broker()
    with Client(broker.address) as client:
        job = submit(client, **LONG_JOB)
        after = cancel_once_running(client, job)
        assert after[-1].type == MessageType.CANCELLED
        assert len([m for m in after if m.type == MessageType.PROGRESS]) <= 2  # within one step
        assert broker.job_states()[job] == "cancelled"
        client.cancel(job)  # no longer running
        assert until(client, job, MessageType.ERROR)[-1].body["code"] == "unexpected"


def test_sixteen_clients_two_workers_fair_bounded(make_broker):
    broker = make_broker(workers=2, queue_size=16, liveness_s=30)
    blocker = Client(broker.address)
    clients = [Client(broker.address) for _ in range(16)]
    try:
        for job in ("block0", "block1"):  # both workers busy: every later job waits in the queue
            submit(blocker, **LONG_JOB, job=job)
            until(blocker, job, MessageType.PROGRESS)
        positions = {}
        plan = [(0, "c0-a"), (0, "c0-b")] + [(i, f"c{i}") for i in range(1, 15)]
        for i, job in plan:
            submit(clients[i], job=job)
            positions[job] = until(clients[i], job, MessageType.ACCEPTED)[-1].body["position"]
        # Round robin: client 0's second job goes behind every other client's first.
        assert positions == {"c0-a": 0, "c0-b": 1, "c1": 1, **{f"c{i}": i for i in range(2, 15)}}
        assert broker.job_states()["c0-b"] == "queued"
        submit(clients[15], job="c15")  # the 17th queued job: over the bound
        error = until(clients[15], "c15", MessageType.ERROR)[-1]
        assert error.body["code"] == ErrorCode.QUEUE_FULL.value

        results = {}

        def wait(i, jobs):
            for job in jobs:  # one thread a client: a ZeroMQ socket must never be used by two threads
                results[job] = list(clients[i].events(job))[-1].type

        jobs_of = {}
        for i, job in plan:
            jobs_of.setdefault(i, []).append(job)
        threads = [threading.Thread(target=wait, args=item) for item in jobs_of.items()]
        for thread in threads:
            thread.start()
        for job in ("block0", "block1"):
            blocker.cancel(job)
            until(blocker, job, MessageType.CANCELLED)
        for thread in threads:
            thread.join(120)
        assert results == {job: MessageType.RESULT for _, job in plan}
        assert broker.started == ["block0", "block1", "c0-a"] + [f"c{i}" for i in range(1, 15)] + ["c0-b"]
    finally:
        blocker.close()
        for client in clients:
            client.close()


def test_broker_caps_each_client_and_still_admits_another(make_broker):
    one_client_cannot_fill_the_queue(make_broker(queue_size=4).address)


def test_broker_refuses_empty_frame_floods_and_a_running_job_completes(make_broker):
    empty_frame_floods_beside_a_job(make_broker())


def test_vanished_client_jobs_are_cancelled_by_broker(make_broker):
    broker = make_broker(heartbeat_s=0.2, liveness_s=1.0)
    client = Client(broker.address)
    submit(client, **LONG_JOB, job="gone0")
    until(client, "gone0", MessageType.PROGRESS)
    submit(client, job="gone1")
    until(client, "gone1", MessageType.ACCEPTED)
    client.close()  # no cancel, no more heartbeats
    start = time.monotonic()
    wait_for(lambda: set(broker.job_states().values()) == {"cancelled"}, timeout=5)
    assert time.monotonic() - start < 2.5


def fake_worker(broker, keys, submits, stop):
    """A worker that says READY, beats until it gets a job, then never answers again (it died)."""
    sock = dealer(broker.backend, keys)
    sock.send_multipart(ready())
    try:
        while not stop.is_set():
            if sock.poll(100):
                message = decode(sock.recv_multipart())
                if message.type == MessageType.SUBMIT:
                    submits.append(message)
                    stop.wait()
            sock.send_multipart(encode(Message(MessageType.HEARTBEAT)))
    finally:
        sock.close(0)


def test_job_lost_twice_is_reported(make_broker, link):
    broker = make_broker(workers=0, heartbeat_s=0.2)
    submits, stop = [], threading.Event()
    keys = curve_keys(link.broker_public, link.worker_secret)
    fakes = [threading.Thread(target=fake_worker, args=(broker, keys, submits, stop)) for _ in range(2)]
    for thread in fakes:
        thread.start()
    try:
        wait_for(lambda: broker.worker_count() == 2)
        with Client(broker.address) as client:
            job = submit(client)
            start = time.monotonic()
            error = until(client, job, MessageType.ERROR)[-1]
            assert error.body["code"] == ErrorCode.WORKER_LOST.value
            assert time.monotonic() - start < 3  # two lost workers, 0.6 s of silence each
        # Each fake got the job once, under a broker job id that is not the client's.
        assert len(submits) == 2 and len({m.job for m in submits}) == 2 and job not in {m.job for m in submits}
        assert broker.started == [job, job] and broker.worker_count() == 0
    finally:
        stop.set()
        for thread in fakes:
            thread.join(5)


def test_worker_rejoins_a_restarted_broker(make_broker, pipelines, link):
    first = make_broker(heartbeat_s=0.2)
    backend = first.backend
    first.stop()
    wait_for(lambda: first._backend.closed)
    second = None

    def restarted() -> bool:  # libzmq frees a closed socket's address a moment later, in its I/O thread
        nonlocal second
        try:
            second = Broker("tcp://127.0.0.1:*", backend, heartbeat_s=0.2, **broker_keys(link))
        except zmq.ZMQError:
            return False
        return True

    wait_for(restarted, timeout=5)
    thread = threading.Thread(target=second.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: second.worker_count() == 1, timeout=60)  # silence for 3 beats, a wait, READY again
        with Client(second.address) as client:
            assert until(client, submit(client), MessageType.RESULT)
    finally:
        second.stop()
        thread.join(30)


def test_a_worker_backs_off_exponentially_while_its_broker_is_silent(link, running, monkeypatch):
    """Paranoid Pirate: a worker reconnects after 3 silent beats, waiting twice as long each time
    up to the most (here 0.5 s doubling to 4 s), and starts again from the first wait once heard."""
    monkeypatch.setattr(server, "RECONNECT_FIRST_S", 0.5)
    monkeypatch.setattr(server, "RECONNECT_MOST_S", 4.0)
    context = zmq.Context()  # of its own: without a ZAP handler, the CURVE server takes every key
    silent = context.socket(zmq.ROUTER)  # a broker that reads and never answers
    silent.setsockopt(zmq.LINGER, 0)
    silent.curve_publickey, silent.curve_secretkey = load_keys(link.broker_secret, secret=True)
    silent.curve_server = True
    port = silent.bind_to_random_port("tcp://127.0.0.1")

    def next_ready():
        deadline = time.monotonic() + 60
        while True:
            assert silent.poll(max(0.0, deadline - time.monotonic()) * 1000), "no READY"
            identity, *frames = silent.recv_multipart()
            if decode(frames).type == MessageType.READY:
                return identity, time.monotonic()

    try:
        running(Worker(None, f"tcp://127.0.0.1:{port}", heartbeat_s=0.2, **worker_keys(link)))
        readies = [next_ready() for _ in range(6)]
        gaps = [later - earlier for (_, earlier), (_, later) in zip(readies, readies[1:])]
        assert all(gap >= wait for gap, wait in zip(gaps, (0.5, 1, 2, 4, 4))), gaps
        assert gaps[-1] < 4 + 2.5, gaps  # no longer than the most, and the silence before it
        silent.send_multipart([readies[-1][0], *encode(Message(MessageType.HEARTBEAT))])
        _, heard_again = next_ready()
        assert 0.5 <= heard_again - readies[-1][1] < 4, gaps  # the first wait again, not the most
    finally:
        silent.close(0)
        context.term()

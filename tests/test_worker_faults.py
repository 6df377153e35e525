"""Faults over real sockets: fuzzed messages, a worker SIGKILLed mid-job (standalone and behind a broker)."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from hypothesis import given, settings

from animax_addon.core.client import Client, WorkerUnavailable
from animax_addon.core.protocol import MessageType, decode
from backend.model.loading import build_tiny_pipeline
from backend.worker.broker import Broker
from backend.worker.server import Worker
from backend.worker.standalone import Standalone
from conftest import Services
from test_broker import broker_keys, link, worker_keys  # noqa: F401 - link is a fixture
from test_protocol import FRAME_LISTS
from test_worker import LONG_JOB, submit, until

ROOT = Path(__file__).resolve().parent.parent
ANSWERS = {MessageType.ERROR, MessageType.WELCOME, MessageType.HEARTBEAT, MessageType.CANCELLED,
           MessageType.ACCEPTED}
FINAL = {MessageType.RESULT, MessageType.ERROR, MessageType.CANCELLED}


def free_port() -> int:
    with zmq.Context.instance().socket(zmq.ROUTER) as probe:
        return probe.bind_to_random_port("tcp://127.0.0.1")


def spawn_worker(*args) -> subprocess.Popen:
    """``animax-worker`` in its own process, so that it can be SIGKILLed."""
    return subprocess.Popen([sys.executable, "-m", "backend.worker.command", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def servers(link):
    """Started together (each process imports torch: ~10 s): a standalone subprocess worker, a broker
    with one subprocess worker, and in-process pipelines for the workers that survive."""
    port = free_port()
    broker = Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", **broker_keys(link))
    processes = [spawn_worker("--address", f"tcp://127.0.0.1:{port}"),
                 spawn_worker("--broker", broker.backend, "--server-key", link.broker_public, "--client-key",
                              link.worker_secret)]
    services = Services()
    services.start(broker)
    pipelines = [build_tiny_pipeline() for _ in range(2)]
    start = services.start

    def start_worker(pipeline, broker, **kwargs):
        return start(Worker(pipeline, broker, **kwargs))

    yield dict(direct=f"tcp://127.0.0.1:{port}", broker=broker, processes=processes, pipelines=pipelines,
               start_worker=start_worker, start=start, link=link)
    for process in processes:
        process.kill()
        process.wait(10)
    services.stop_all()  # the broker, started first, stops last


def wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def wait_up(address, timeout=90):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with Client(address, timeout_s=1) as client:
                return client.hello()
        except WorkerUnavailable:
            assert time.monotonic() < deadline, f"no worker came up at {address}"


def recv(sock):
    assert sock.poll(5000), "no answer within 5 s"
    return decode(sock.recv_multipart())


def exchange(sock, frames) -> None:
    """Send one (fuzzed) message: it must be answered with a coded error or a proper reply; an
    accepted job (a fuzzed but valid submit) must then end."""
    sock.send_multipart(frames)
    reply = recv(sock)
    assert reply.type in ANSWERS, reply
    if reply.type == MessageType.ACCEPTED:
        while not ((message := recv(sock)).type in FINAL and message.job == reply.job):
            assert message.type in (MessageType.PROGRESS, MessageType.HEARTBEAT), message


def fuzz_target(address):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


@pytest.mark.parametrize("target", ["worker", "broker"])
def test_fuzzed_messages_then_a_real_job(servers, target):
    if target == "worker":
        address = servers["start"](Standalone(servers["pipelines"][0], "tcp://127.0.0.1:*")).address
    else:
        broker = servers["start"](Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", **broker_keys(servers["link"])))
        servers["start_worker"](servers["pipelines"][0], broker=broker.backend, **worker_keys(servers["link"]))
        wait_for(lambda: broker.worker_count() == 1, 10)
        address = broker.address
    sock = fuzz_target(address)
    count = []

    @settings(max_examples=1000, deadline=None)
    @given(FRAME_LISTS.filter(bool))  # ZeroMQ cannot send an empty multipart message
    def fuzz(frames):
        exchange(sock, frames)
        count.append(1)

    try:
        fuzz()
    finally:
        sock.close(0)
    assert len(count) == 1000
    with Client(address) as client:
        assert until(client, submit(client), MessageType.RESULT)


def test_sigkilled_worker_is_reported_within_5_s(servers):
    wait_up(servers["direct"])
    with Client(servers["direct"], liveness_s=3) as client:
        job = submit(client, **LONG_JOB)
        until(client, job, MessageType.PROGRESS)
        servers["processes"][0].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(WorkerUnavailable, match="stopped answering"):
            until(client, job, MessageType.RESULT)
        assert time.monotonic() - killed < 5


def test_sigkilled_worker_behind_broker_job_requeued_once(servers):
    broker, process = servers["broker"], servers["processes"][1]
    wait_for(lambda: broker.worker_count() == 1, 90)
    with Client(broker.address) as client:
        job = submit(client, steps=30)
        until(client, job, MessageType.PROGRESS)  # running in the subprocess: the only worker
        servers["start_worker"](servers["pipelines"][1], broker=broker.backend, **worker_keys(servers["link"]))
        wait_for(lambda: broker.worker_count() == 2, 10)
        process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        messages = until(client, job, MessageType.RESULT)
        # ~3 s to notice, then 30 steps on the other worker; generous for a loaded 2-core CI machine
        assert time.monotonic() - killed < 60
    # Progress restarted from step 1 on the second worker; the client got no error on the way.
    steps = [m.body["step"] for m in messages if m.type == MessageType.PROGRESS and m.body["stage"] == "denoise"]
    assert steps[-30:] == list(range(1, 31)) and all(m.type != MessageType.ERROR for m in messages)
    assert broker.started == [job, job] and broker.job_states()[job] == "done" and broker.worker_count() == 1
    assert process.wait(5) == -signal.SIGKILL

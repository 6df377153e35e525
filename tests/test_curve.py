"""CurveZMQ: keys from ``animax-worker keygen``; wrong or unlisted keys get nothing, right keys work."""

import logging
import time

import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from animax_addon.core.client import Client, WorkerUnavailable
from animax_addon.core.protocol import MessageType
from backend.model.loading import build_tiny_pipeline
from backend.worker import command
from backend.worker.broker import Broker
from backend.worker.security import Authenticator, LogThrottle
from backend.worker.server import Worker
from backend.worker.standalone import Standalone
from test_broker import broker_keys, link, wait_for, worker_keys  # noqa: F401 - link is a fixture
from test_worker import submit, until


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    for name in ("server", "alice", "bob"):
        command.main(["keygen", str(root), "--name", name])
    allow = root / "allow"
    allow.mkdir()
    (allow / "alice.key").write_bytes((root / "alice.key").read_bytes())  # bob is not on the list
    return root


# The pytest-xdist worker running one of these two tests has died without a trace (no signal
# handler fired, no fault dump: "node down: Not properly terminated") in 3 of 5 full-suite runs on
# 2026-12-05, never when the file ran alone or beside the other network tests (20 loops in session
# 7), and not in 8 later full runs. The cause is not found (docs/architecture.md, "Known issues").
# A crashed worker is replaced and the test run again there, so the suite stays a true signal.
SILENT_WORKER_DEATH = pytest.mark.flaky(reruns=2)


def port_of(address):
    return f"tcp://127.0.0.1:{address.rsplit(':', 1)[1]}"


def client(keys, address, user="alice", server_key="server.key"):
    return Client(port_of(address), timeout_s=1, server_public_key=keys / server_key,
                  client_secret_file=keys / f"{user}.key_secret")


def check_access(keys, address):
    with client(keys, address, "bob") as unlisted, pytest.raises(WorkerUnavailable, match="CurveZMQ keys"):
        unlisted.hello()
    with client(keys, address, server_key="bob.key") as wrong_server, pytest.raises(WorkerUnavailable):
        wrong_server.hello()
    with Client(port_of(address), timeout_s=1) as plain, pytest.raises(WorkerUnavailable):
        plain.hello()
    for wait in (0, 0.05, 0.5):  # a failed handshake ends the connection (until the next try) at some moment:
        with client(keys, address, "bob") as late, pytest.raises(WorkerUnavailable):  # a send then must not block
            late._sock()
            time.sleep(wait)
            late.hello()


@SILENT_WORKER_DEATH
def test_worker_off_loopback_with_curve(keys, running):
    worker = running(Standalone(build_tiny_pipeline(), "tcp://0.0.0.0:*", curve_secret=str(keys / "server.key_secret"),
                                allow=str(keys / "allow")))
    check_access(keys, worker.address)
    with client(keys, worker.address) as alice:
        assert alice.hello()["model"] == "tiny"
        assert until(alice, submit(alice), MessageType.RESULT)[-1].type == MessageType.RESULT


@SILENT_WORKER_DEATH
def test_broker_frontend_with_curve(keys, link, running):
    broker = running(Broker("tcp://0.0.0.0:*", "tcp://127.0.0.1:*", curve_secret=str(keys / "server.key_secret"),
                            allow=str(keys / "allow"), **broker_keys(link)))
    # Each socket has its own list: alice's key, listed for clients, does not make a worker.
    running(Worker(None, broker=broker.backend, server_public_key=str(link.broker_public),
                   client_secret_file=str(keys / "alice.key_secret"), heartbeat_s=0.2))
    running(Worker(None, broker=broker.backend, **worker_keys(link)))  # hello only: no job reaches its pipeline
    wait_for(lambda: broker.worker_count() == 1)
    check_access(keys, broker.address)
    with client(keys, broker.address) as alice:
        alice.timeout_s = 5
        assert alice.hello()["preset"]["name"] == "tiny"
    assert broker.worker_count() == 1  # alice's worker kept trying all along


def test_plain_tcp_off_loopback_is_refused(keys, link, capsys, tmp_path):
    with pytest.raises(ValueError, match="--curve-secret"):
        Standalone(None, "tcp://0.0.0.0:*")
    with pytest.raises(ValueError, match="--curve-secret"):
        Broker("tcp://0.0.0.0:*", "tcp://127.0.0.1:*", **broker_keys(link))
    with pytest.raises(SystemExit) as info:
        command.main(["--address", "tcp://192.168.1.10:5555"])
    assert info.value.code == 2 and "CurveZMQ" in capsys.readouterr().err
    with pytest.raises(ValueError, match="holds no client public keys"):
        Standalone(None, "tcp://0.0.0.0:*", curve_secret=str(keys / "server.key_secret"), allow=str(tmp_path))
    with pytest.raises(ValueError, match="only a public key"):
        Standalone(None, "tcp://0.0.0.0:*", curve_secret=str(keys / "server.key"), allow=str(keys / "allow"))


def test_broker_refuses_to_start_without_a_list_of_worker_keys(link, tmp_path):
    with pytest.raises(TypeError, match="worker_secret"):
        Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*")  # no default: no broker without worker keys
    with pytest.raises(ValueError, match="holds no worker public keys"):
        Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", worker_secret=str(link.broker_secret),
               worker_allow=str(tmp_path))
    with pytest.raises(ValueError, match="joins its broker over CurveZMQ"):
        Worker(None, broker="tcp://127.0.0.1:5556")


def test_refused_keys_are_logged_once_a_minute(keys, caplog):
    """Each refused key gets one warning line naming the ZAP domain, however often it tries."""
    caplog.set_level(logging.WARNING, logger="animax.security")
    context = zmq.Context()  # a ZAP handler of its own
    auth = Authenticator(context)
    server_socket = context.socket(zmq.ROUTER)
    server_socket.setsockopt(zmq.LINGER, 0)
    auth.serve(server_socket, keys / "server.key_secret", keys / "allow", "clients")
    server_socket.bind("tcp://127.0.0.1:*")
    try:
        deadline = time.monotonic() + 30
        for _ in range(5):  # a refused peer does not try again itself: a flood is many connections
            for name in ("bob", "server"):  # neither is on the list
                sock = zmq.Context.instance().socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.curve_serverkey = zmq.auth.load_certificate(keys / "server.key")[0]
                sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(keys / f"{name}.key_secret")
                monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
                try:
                    sock.connect(server_socket.getsockopt_string(zmq.LAST_ENDPOINT))
                    while not monitor.poll(0):  # until this connection has been refused
                        assert time.monotonic() < deadline, "no handshake was refused"
                        if auth.socket.poll(20):
                            auth.handle()
                    assert recv_monitor_message(monitor)["value"] == 400
                finally:
                    monitor.close(0)
                    sock.close(0)
        lines = sorted(r.getMessage() for r in caplog.records if r.name == "animax.security")
        assert len(lines) == 2 and all("on ZAP domain 'clients': not in its allow-list" in line for line in lines)
        prefixes = sorted(zmq.auth.load_certificate(keys / f"{n}.key")[0][:8].decode() for n in ("bob", "server"))
        assert [line.split()[3] for line in lines] == [f"{p}..." for p in prefixes]
    finally:
        server_socket.close(0)
        auth.close()
        context.term()
    # A minute later a key is named again; and at most `most` lines a minute, fresh keys or not.
    throttle = LogThrottle(period_s=60, most=2)
    assert [throttle.allow(k, now=0) for k in ("a", "a", "b", "c")] == [True, False, True, False]
    assert [throttle.allow(k, now=59) for k in ("a", "c")] == [False, False]
    assert [throttle.allow(k, now=60) for k in ("a", "a", "c", "d")] == [True, False, True, False]

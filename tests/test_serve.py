"""animax-serve: a broker and one worker process per device, each restarted when it dies."""

import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from animax_addon.core.cameras import make_camera_rig
from animax_addon.core.client import Client, WorkerUnavailable
from animax_addon.core.protocol import MessageType, ProtocolError
from animax_addon.core.request import Options, Request
from backend.worker import serve

SIZE = 64  # the shipped tiny model's size
RIG = {"bones": [
    {"name": "root", "parent": None, "head": [0, 0, 0], "tail": [0, 0, 0.5]},
    {"name": "arm", "parent": "root", "head": [0, 0, 0.5], "tail": [0.4, 0, 0.8]},
]}
CAMERAS = make_camera_rig(np.array([0.0, 0.0, 0.4]), 0.6, SIZE).to_dict()
TEMPLATES = np.full((4, SIZE, SIZE, 3), 64, dtype=np.uint8)
REQUEST = Request.from_images("the arm waves", RIG, CAMERAS, TEMPLATES,
                              Options(steps=2, guidance=3.0, seed=0, frames=5, fps=16.0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("spec, devices", [("cpu:2", ["", ""]), ("0,1", ["0", "1"]), ("3", ["3"])])
def test_devices(spec, devices):
    assert serve.parse_devices(spec) == devices


@pytest.mark.parametrize("spec", ["cpu:0", "cpu:x", "0,0", "gpu1", ""])
def test_bad_devices_are_refused(spec):
    with pytest.raises(ValueError, match="--gpus"):
        serve.parse_devices(spec)


def test_one_worker_per_device_with_multicast_off(tmp_path):
    front, back = "tcp://127.0.0.1:7000", "tcp://127.0.0.1:7001"
    args = serve.argparse.Namespace(gpus="0,1", address=front, workers=back, queue_size=4, model="tiny",
                                    curve_secret=None, allow=None, wan=None, adapter=None)
    keys = serve.link_keys(tmp_path)
    broker, workers = serve.commands(args, keys)
    assert broker[-10:] == ["--address", front, "--workers", back, "--worker-secret", str(keys.broker_secret),
                            "--allow-workers", str(keys.allow), "--queue-size", "4"]
    assert [env for _, env in workers] == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    assert all(command[-8:] == ["--broker", back, "--server-key", str(keys.broker_public), "--client-key",
                                str(keys.worker_secret), "--model", "tiny"] for command, _ in workers)
    supervisor = serve.Supervisor(broker, workers)
    for process in supervisor.workers + [supervisor.broker]:
        assert all(process.env[key] == value for key, value in serve.MULTICAST_OFF.items())
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in supervisor.workers] == ["0", "1"]


def test_the_workers_keys_are_made_private_for_one_run(monkeypatch):
    seen = []

    def run(supervisor):
        worker = supervisor.workers[0].command
        folder = Path(worker[worker.index("--client-key") + 1]).parent
        seen.append((folder, stat.S_IMODE(folder.stat().st_mode), sorted(p.name for p in folder.iterdir())))
        return 0

    monkeypatch.setattr(serve.Supervisor, "run", run)
    monkeypatch.setattr(serve.signal, "signal", lambda *_: None)
    assert serve.main(["--gpus", "cpu:1", "--address", f"tcp://127.0.0.1:{free_port()}"]) == 0
    [(folder, mode, files)] = seen
    assert mode == 0o700 and files == ["broker.key", "broker.key_secret", "worker.key", "worker.key_secret", "workers"]
    assert not folder.exists()  # removed once the server stops


def run_job(address: str) -> MessageType:
    with Client(address, timeout_s=5.0) as client:
        job = client.submit(REQUEST)
        for message in client.events(job):
            if message.type in (MessageType.RESULT, MessageType.ERROR, MessageType.CANCELLED):
                return message.type


def welcome(address: str, seconds: float = 120) -> dict:
    """The served address's welcome, once a broker is up and a worker has joined it (processes
    that load torch and the model on a 2-core machine take a while)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with Client(address, timeout_s=3.0) as client:
                return client.hello()
        except (WorkerUnavailable, ProtocolError):  # broker not up yet / no worker connected yet
            assert time.monotonic() < deadline, "the served address never answered"
            time.sleep(0.5)


def wait_restarted(process, seconds: float = 120) -> None:
    old_pid = process.popen.pid
    process.popen.kill()
    deadline = time.monotonic() + seconds
    while process.restarts == 0:
        assert time.monotonic() < deadline, f"the killed {process.name} was not started again"
        time.sleep(0.1)
    assert process.popen.pid != old_pid


def test_serves_through_the_broker_and_restarts_a_killed_worker_or_broker(tmp_path):
    address, backend = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    args = serve.argparse.Namespace(gpus="cpu:2", address=address, workers=backend, queue_size=4, model="tiny",
                                    curve_secret=None, allow=None, wan=None, adapter=None)
    supervisor = serve.Supervisor(*serve.commands(args, serve.link_keys(tmp_path)), pause_s=0.5)
    thread = threading.Thread(target=supervisor.run, daemon=True)
    thread.start()
    try:
        assert welcome(address)["preset"]["size"] == SIZE
        assert run_job(address) == MessageType.RESULT
        wait_restarted(supervisor.workers[0])
        assert run_job(address) == MessageType.RESULT  # the other worker, or the restarted one
        workers = [worker.popen.pid for worker in supervisor.workers]
        wait_restarted(supervisor.broker)
        assert welcome(address)["preset"]["size"] == SIZE  # the workers rejoined the new broker
        assert run_job(address) == MessageType.RESULT
        assert [worker.popen.pid for worker in supervisor.workers] == workers  # they kept running
    finally:
        supervisor.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert all(p.popen.poll() is not None for p in supervisor.workers + [supervisor.broker])


PYTHON = [serve.sys.executable, "-c"]
SLEEPER = PYTHON + ["import time; time.sleep(600)"]


def run_in_thread(supervisor):
    status = []
    thread = threading.Thread(target=lambda: status.append(supervisor.run()), daemon=True)
    thread.start()
    return thread, status


EXITS = PYTHON + ["import sys; sys.exit(3)"]


@pytest.mark.parametrize("broker, worker", [(EXITS, SLEEPER), (SLEEPER, EXITS)], ids=["broker", "worker"])
def test_a_process_that_exits_late_is_started_again(monkeypatch, broker, worker):
    monkeypatch.setattr(serve, "EARLY_EXIT_S", 0.0)  # an exit is never "early": restarts go on
    supervisor = serve.Supervisor(broker, [(worker, {})], pause_s=0.1)
    exiting, sleeping = (supervisor.broker, supervisor.workers[0]) if broker is EXITS else \
        (supervisor.workers[0], supervisor.broker)
    thread, status = run_in_thread(supervisor)
    deadline = time.monotonic() + 120
    while exiting.restarts < 4:
        assert time.monotonic() < deadline and thread.is_alive(), f"the {exiting.name} was not started again"
        time.sleep(0.05)
    assert sleeping.restarts == 0 and sleeping.popen.poll() is None  # the other runs on
    supervisor.stop()
    thread.join(120)
    assert status == [0]


@pytest.mark.parametrize("broker, worker", [(EXITS, SLEEPER), (SLEEPER, EXITS)], ids=["broker", "worker"])
def test_a_process_that_keeps_exiting_at_start_stops_everything_with_status_1(monkeypatch, broker, worker):
    monkeypatch.setattr(serve, "EARLY_EXIT_S", 600.0)  # every exit of the test's quick processes is early
    supervisor = serve.Supervisor(broker, [(worker, {})], pause_s=0.1)
    exiting = supervisor.broker if broker is EXITS else supervisor.workers[0]
    thread, status = run_in_thread(supervisor)
    thread.join(120)
    assert status == [1]
    assert exiting.restarts == serve.EARLY_EXITS - 1  # started 3 times, then given up
    assert all(p.popen.poll() is not None for p in supervisor.workers + [supervisor.broker])  # all stopped


def test_animax_serve_exits_1_when_its_broker_cannot_start():
    """The broker's address is taken: the broker exits at once, three times, and so does
    ``animax-serve``, with status 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        serving = subprocess.run([serve.sys.executable, "-m", "backend.worker.serve", "--gpus", "cpu:1",
                                  "--address", address, "--workers", f"tcp://127.0.0.1:{free_port()}"],
                                 cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                                 timeout=300)
    assert serving.returncode == 1, serving.stderr
    assert f"broker exited {serve.EARLY_EXITS} times right after starting" in serving.stderr


def test_a_process_that_cannot_start_gives_status_1():
    missing = ["/nonexistent/animax-broker"]
    assert serve.Supervisor(missing, [(SLEEPER, {})]).run() == 1
    supervisor = serve.Supervisor(SLEEPER, [(["/nonexistent/animax-worker"], {})])
    assert supervisor.run() == 1
    assert supervisor.broker.popen.poll() is not None  # the broker started was stopped again


def test_a_stopped_server_gives_status_0():
    supervisor = serve.Supervisor(SLEEPER, [(SLEEPER, {})])
    thread, status = run_in_thread(supervisor)
    deadline = time.monotonic() + 120
    while supervisor.workers[0].popen is None:
        assert time.monotonic() < deadline and thread.is_alive(), "the worker was never started"
        time.sleep(0.05)
    supervisor.stop()
    thread.join(120)
    assert status == [0]
    assert all(p.popen.poll() is not None for p in supervisor.workers + [supervisor.broker])

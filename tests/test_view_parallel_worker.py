"""animax-worker --view-parallel 2 as its own process (2 ranks, gloo on the CPU, the shipped tiny
model): through a real client its result equals the one-process worker's, a cancel stops both
ranks and the next job runs, a follower that dies fails the job and ends the worker (here behind
a broker), SIGTERM ends it cleanly; values that do not divide the 4 views are parser errors."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from animax_addon.core.client import Client, result_arrays
from animax_addon.core.protocol import MessageType
from backend.model.loading import load_tiny, tiny_preset
from backend.model.presets import TINY_WEIGHTS
from backend.worker import command
from backend.worker.broker import Broker
from backend.worker.standalone import Standalone
from test_broker import broker_keys, link  # noqa: F401 - link is a fixture
from test_worker import LONG_JOB, submit, until
from test_worker_faults import free_port, wait_for, wait_up

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pipeline():
    """What `animax-worker` loads: the shipped weights."""
    return load_tiny(TINY_WEIGHTS)


def start_split_worker(log: Path, *args) -> subprocess.Popen:
    """The CPU path (gloo) on any machine, like the in-process worker it is compared with."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "backend.worker.command", "--view-parallel", "2", *args],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def follower_lines(log: Path) -> list[str]:
    """What the follower said about the jobs it ran, so far."""
    return re.findall(r"rank 1: .*", log.read_text())


def new_follower_lines(log: Path, seen: int, count: int) -> list[str]:
    """The follower's lines after the first ``seen``, once ``count`` are there (it may end a job after rank 0)."""
    wait_for(lambda: len(follower_lines(log)) >= seen + count, 10)
    return follower_lines(log)[seen:]


@pytest.fixture(scope="module")
def split_worker(tmp_path_factory):
    log = tmp_path_factory.mktemp("split") / "worker.log"
    address = f"tcp://127.0.0.1:{free_port()}"
    process = start_split_worker(log, "--address", address)
    try:
        wait_up(address, timeout=120)  # two processes import torch and load the model on 2 cores
        yield address, log
    finally:
        process.send_signal(signal.SIGTERM)
        status = process.wait(60)
    assert status == 0, log.read_text()
    follower = int(re.search(r"rank 1 ready \(pid (\d+)", log.read_text())[1])
    assert not Path(f"/proc/{follower}").exists()


def test_split_job_equals_the_one_process_job(split_worker, pipeline, running):
    address, log = split_worker
    seen = len(follower_lines(log))
    results = []
    one_process = Standalone(pipeline, "tcp://127.0.0.1:*", preset=tiny_preset(TINY_WEIGHTS))  # as animax-worker
    for where in (address, running(one_process).address):
        with Client(where) as client:
            job = submit(client, steps=3, variations=2)  # a generator each, to every rank
            results.append(result_arrays(until(client, job, MessageType.RESULT)[-1]))
    split, alone = results
    # the follower ran the job in step with rank 0 (alone, rank 0 would have given the same result)
    assert new_follower_lines(log, seen, 1) == ["rank 1: done after 3 of 3 steps"]
    assert len(split) == len(alone) == 2
    for split_variation, alone_variation in zip(split, alone):
        assert set(split_variation) == set(alone_variation) >= {"rotations", "joints", "pose_video"}
        for name in alone_variation:
            np.testing.assert_allclose(split_variation[name], alone_variation[name], atol=1e-4, err_msg=name)


def test_cancel_stops_every_rank_and_the_next_job_runs(split_worker):
    address, log = split_worker
    seen = len(follower_lines(log))
    with Client(address) as client:
        job = submit(client, **LONG_JOB)
        until(client, job, MessageType.PROGRESS)
        client.cancel(job)
        until(client, job, MessageType.CANCELLED)
        assert until(client, submit(client, steps=2), MessageType.RESULT)
    stopped, done = new_follower_lines(log, seen, 2)
    assert re.fullmatch(rf"rank 1: stopped after \d+ of {LONG_JOB['steps']} steps", stopped)
    assert int(stopped.split()[4]) < 20 and done == "rank 1: done after 2 of 2 steps"


def test_dead_follower_fails_the_job_and_ends_the_worker(running, tmp_path, link):
    broker = running(Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", **broker_keys(link)))
    log = tmp_path / "worker.log"
    process = start_split_worker(log, "--broker", broker.backend, "--server-key", link.broker_public,
                                 "--client-key", link.worker_secret)
    try:
        wait_for(lambda: broker.worker_count() == 1, 120)
        with Client(broker.address) as client:
            job = submit(client, **LONG_JOB)
            until(client, job, MessageType.PROGRESS)
            follower = int(re.search(r"rank 1 ready \(pid (\d+)", log.read_text())[1])
            os.kill(follower, signal.SIGKILL)
            start = time.monotonic()
            error = until(client, job, MessageType.ERROR)[-1]
        assert error.body["code"] == "internal"
        assert process.wait(30) == 1
        assert time.monotonic() - start < 10
        # whichever rank 0 noticed first: the follower's exit, or the collective that lost it
        assert re.search(r"(animax-view-parallel-1 exited \(status -9\)|call failed on rank 0 .* by peer.*); "
                         r"stopping the worker", log.read_text())
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("value, message", [("3", "must divide the 4 views of a job: 1, 2 or 4, got 3"),
                                            ("0", "got 0"), ("-2", "got -2"), ("two", "invalid int value")])
def test_view_parallel_must_divide_the_views(value, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        command.main(["--view-parallel", value])
    assert exit_.value.code == 2 and message in capsys.readouterr().err

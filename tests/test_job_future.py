"""The add-on's job as a Future, without Blender: callbacks run only where ``deliver()`` is called
(Blender's main thread in the add-on), never on the thread that resolves the future; one Animate
against a real worker with the tiny random pipeline."""

import threading
import time
from concurrent.futures import InvalidStateError
from pathlib import Path

import pytest

from animax_addon.job_future import (
    JobError, JobFuture, JobSpec, MainThreadFuture, Progress, Variation, Welcome, start_job,
)
from backend.model.loading import build_tiny_pipeline
from backend.worker.standalone import Standalone
from test_worker import request
from test_worker_faults import free_port


def on_thread(fn) -> None:
    thread = threading.Thread(target=fn)
    thread.start()
    thread.join()


def recorder(future: MainThreadFuture) -> list:
    """(what, value, thread) for each callback, as they run."""
    calls = []
    future.add_update_callback(lambda update: calls.append(("update", update, threading.get_ident())))
    future.add_done_callback(lambda done: calls.append(("done", done, threading.get_ident())))
    return calls


def test_callbacks_run_in_order_only_when_delivered_and_on_the_delivering_thread():
    future = MainThreadFuture()
    calls = recorder(future)

    def resolve():
        future.set_update("connected")
        future.set_update("step 1")
        future.set_result(42)

    on_thread(resolve)
    assert future.done() and future.result() == 42
    assert calls == []  # resolved, but nothing ran on the resolving thread
    future.deliver()
    main = threading.get_ident()
    assert calls == [("update", "connected", main), ("update", "step 1", main), ("done", future, main)]
    future.deliver()
    assert len(calls) == 3  # each callback once


def test_a_callback_added_after_the_result_waits_for_deliver_too():
    future = MainThreadFuture()
    on_thread(lambda: future.set_result("ready"))
    calls = recorder(future)
    assert calls == []
    future.deliver()
    assert [(what, value) for what, value, _ in calls] == [("done", future)]


def test_an_exception_is_delivered_as_the_outcome():
    future = MainThreadFuture()
    calls = recorder(future)
    on_thread(lambda: future.set_exception(JobError("the worker refused the rig")))
    future.deliver()
    assert [what for what, _, _ in calls] == ["done"]
    assert str(future.exception()) == "the worker refused the rig"


def test_a_cancel_is_the_outcome_and_a_later_result_is_refused():
    future = MainThreadFuture()
    calls = recorder(future)
    assert future.cancel() and future.cancelled()
    with pytest.raises(InvalidStateError):  # the network thread's result after the cancel
        future.set_result("late")
    assert calls == []
    future.deliver()
    assert [what for what, _, _ in calls] == ["done"] and calls[0][1].cancelled()


def test_a_callback_that_raises_leaves_the_rest_for_the_next_deliver():
    future = MainThreadFuture()
    seen = []

    def show(update):
        if update == "bad":
            raise ValueError(update)
        seen.append(update)

    future.add_update_callback(show)
    for update in ("first", "bad", "last"):
        future.set_update(update)
    with pytest.raises(ValueError):
        future.deliver()
    assert seen == ["first"]
    future.deliver()
    assert seen == ["first", "last"]


def test_a_cancel_ends_the_wait_for_the_request():
    future = JobFuture()
    got = []
    thread = threading.Thread(target=lambda: got.append(future.wait_request()))
    thread.start()
    future.cancel()
    thread.join(30)
    assert got == [None]
    sent, made = JobFuture(), request()
    sent.send_request(made)
    assert sent.wait_request() is made


@pytest.fixture(scope="module")
def pipeline():
    return build_tiny_pipeline()


def deliver_until_done(future: JobFuture, timeout_s: float = 120) -> None:
    """Deliver as Blender's timer would, until the done callback has run."""
    ended = []
    future.add_done_callback(ended.append)
    deadline = time.monotonic() + timeout_s
    while not ended:
        assert time.monotonic() < deadline, "the job did not end"
        future.deliver()
        time.sleep(0.01)


def test_a_job_reports_the_welcome_and_progress_then_resolves_with_each_variation(pipeline, running, tmp_path):
    worker = running(Standalone(pipeline, "tcp://127.0.0.1:*"))
    future = start_job(JobSpec(worker.address, str(tmp_path)))
    updates = []

    def on_update(update):
        updates.append(update)
        if isinstance(update, Welcome):  # the main thread renders the templates at the worker's size
            future.send_request(request(seed=3, variations=2))

    future.add_update_callback(on_update)
    deliver_until_done(future)
    assert isinstance(updates[0], Welcome) and updates[0].body["preset"]["name"] == "tiny"
    progress = updates[1:]
    assert progress and all(isinstance(update, Progress) for update in progress)
    fractions = [p.fraction for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    stages = [p.stage for p in progress]
    assert "Denoise 2/2 (2 variations)" in stages and stages[-1] == "Reconstruct 2/2"
    assert [p.eta_s is not None for p in progress if p.stage.startswith("Reconstruct")] == [False, True, True]
    assert len(worker.job_states()) == 1  # one job for both variations
    variations = future.result()
    assert len(variations) == 2 and all(isinstance(v, Variation) for v in variations)
    for i, variation in enumerate(variations):
        assert variation.arrays["rotations"].shape[1] == len(variation.diagnostics["bone_names"])
        first, count = variation.previews["pose"]
        assert Path(first).parent.name == f"variation{i + 1}_pose" and count == len(list(Path(first).parent.iterdir()))


def test_a_cancel_mid_job_reaches_the_worker(pipeline, running, tmp_path):
    worker = running(Standalone(pipeline, "tcp://127.0.0.1:*"))
    future = start_job(JobSpec(worker.address, str(tmp_path)))

    def on_update(update):
        if isinstance(update, Welcome):
            future.send_request(request(steps=50))
        elif update.stage.startswith("Denoise"):
            future.cancel()

    future.add_update_callback(on_update)
    deliver_until_done(future)
    assert future.cancelled()
    deadline = time.monotonic() + 120  # the worker stops after its current step
    while list(worker.job_states().values()) != ["cancelled"]:
        assert time.monotonic() < deadline, worker.job_states()
        time.sleep(0.05)


def test_an_unreachable_worker_is_a_job_error(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    future = start_job(JobSpec(address, str(tmp_path), client_options={"timeout_s": 0.5}))
    deliver_until_done(future)
    error = future.exception()
    assert isinstance(error, JobError) and "did not answer within 0.5 s" in str(error)

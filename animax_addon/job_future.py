"""One Animate on the worker as a Future, bpy-free.

``start_job`` starts a thread that owns the ZeroMQ client (a socket is used by one thread only)
and returns a ``JobFuture``. The thread reports the worker's ``Welcome`` and the job's
``Progress`` as updates, and resolves the future with every variation's result (one job: the
variations are one batch on the worker) or a ``JobError``;
a cancelled future stays cancelled. The future's callbacks never run on that thread: they wait
until ``deliver()`` is called, which ``job.py`` does on Blender's main thread, the only thread
that may touch Blender data.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np

from .core.client import Client, WorkerUnavailable, result_arrays
from .core.protocol import MessageType, ProtocolError
from .core.request import Request


class MainThreadFuture(Future):
    """A ``concurrent.futures.Future`` with updates before its result, whose callbacks run only
    inside ``deliver()``, on the thread that calls it.

    Any thread may resolve it, cancel it or ``set_update``; done callbacks (``add_done_callback``)
    and update callbacks (``add_update_callback``) are queued in that order and run by the next
    ``deliver()``. An exception from a callback propagates out of ``deliver()``, and what was
    queued after it runs on the next call.
    """

    def __init__(self):
        super().__init__()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._update_callbacks: list[Callable[[Any], None]] = []

    def add_done_callback(self, fn: Callable[[Future], None]) -> None:
        super().add_done_callback(lambda future: self._calls.put(partial(fn, future)))

    def add_update_callback(self, fn: Callable[[Any], None]) -> None:
        """``fn(update)`` for every update delivered from now on."""
        self._update_callbacks.append(fn)

    def set_update(self, update: Any) -> None:
        self._calls.put(partial(self._run_update_callbacks, update))

    def _run_update_callbacks(self, update: Any) -> None:
        for fn in self._update_callbacks:
            fn(update)

    def deliver(self) -> None:
        """Run the callbacks queued so far, on this thread."""
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            call()


class JobError(Exception):
    """The job failed; the text is a sentence for the user."""


@dataclass
class Welcome:
    """The worker's welcome; its ``preset`` tells the image size, frames, fps and joints."""

    body: dict


@dataclass
class Progress:
    """What the panel shows: a stage, the fraction of the whole Animate done (None: unchanged) and
    the seconds left (None: unknown)."""

    stage: str
    fraction: float | None = None
    eta_s: float | None = None


@dataclass
class Variation:
    """One seed's result: the arrays, the diagnostics and {output: (first preview frame, frame count)}."""

    arrays: dict[str, np.ndarray]
    diagnostics: dict
    previews: dict[str, tuple[str, int]]


class JobFuture(MainThreadFuture):
    """One Animate: updates ``Welcome`` then ``Progress``, the result a ``Variation`` per seed of
    the request's options, the exception a ``JobError``.

    The templates are rendered at the worker's image size, so after the welcome the thread waits
    for ``send_request`` and sends that request; a cancel ends the wait.
    """

    def __init__(self):
        super().__init__()
        self._requests: queue.SimpleQueue[Request | None] = queue.SimpleQueue()

    def send_request(self, request: Request) -> None:
        self._requests.put(request)

    def cancel(self) -> bool:
        cancelled = super().cancel()
        self._requests.put(None)
        return cancelled

    def wait_request(self) -> Request | None:
        """The thread's side: the request, or None once cancelled."""
        request = self._requests.get()
        return None if self.cancelled() else request


@dataclass
class JobSpec:
    """Everything the job's thread needs, as plain values."""

    address: str
    preview_dir: str
    client_options: dict = field(default_factory=dict)
    local: object | None = None  # a local_worker.LocalWorker still starting up, or None
    startup_timeout_s: float = 0.0


def start_job(spec: JobSpec) -> JobFuture:
    """Connect, wait for the request, run it; on a thread of its own."""
    future = JobFuture()
    threading.Thread(target=_JobThread(spec, future).run, name="animax-job", daemon=True).start()
    return future


def tile_views(video: np.ndarray) -> np.ndarray:
    """(V, T, H, W, 3) -> (T, rows*H, cols*W, 3): the views side by side, two per row for four."""
    views, frames, height, width = video.shape[:4]
    cols = math.ceil(math.sqrt(views))
    rows = math.ceil(views / cols)
    grid = np.zeros((frames, rows * height, cols * width, 3), dtype=np.uint8)
    for v in range(views):
        r, c = divmod(v, cols)
        grid[:, r * height:(r + 1) * height, c * width:(c + 1) * width] = video[v]
    return grid


class _JobThread:
    def __init__(self, spec: JobSpec, future: JobFuture):
        self.spec, self.future = spec, future
        self._reconstruct_started = time.monotonic()

    def run(self) -> None:
        client = Client(self.spec.address, **self.spec.client_options)
        try:
            variations = self._run(client)
        except WorkerUnavailable as exc:
            local = self.spec.local
            self._fail(local.exit_message() if local and not local.running() else str(exc))
        except ProtocolError as exc:
            self._fail(exc.sentence)
        except JobError as exc:
            self._fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - the user must see it in the panel, not in a dead thread
            self._fail(f"AnimaX failed unexpectedly ({type(exc).__name__}: {exc}); please report this with the "
                       "worker log")
        else:
            if variations is not None:
                self._resolve(self.future.set_result, variations)
        finally:
            client.close()

    def _resolve(self, method: Callable[[Any], None], value: Any) -> None:
        try:
            method(value)
        except InvalidStateError:  # cancelled meanwhile: the cancel stands
            pass

    def _fail(self, sentence: str) -> None:
        self._resolve(self.future.set_exception, JobError(sentence))

    def _run(self, client: Client) -> list[Variation] | None:
        """Every variation, or None once cancelled."""
        welcome = self._connect(client)
        if welcome is None:
            return None
        self.future.set_update(Welcome(welcome))
        request = self.future.wait_request()
        if request is None:
            return None
        return self._job(client, request)

    def _connect(self, client: Client) -> dict | None:
        """The worker's WELCOME; a local worker that is still loading its model gets time."""
        deadline = time.monotonic() + self.spec.startup_timeout_s
        while not self.future.cancelled():
            try:
                return client.hello()
            except WorkerUnavailable:
                local = self.spec.local
                if local is None or not local.running() or time.monotonic() > deadline:
                    raise
        return None

    def _job(self, client: Client, request: Request) -> list[Variation] | None:
        """One SUBMIT for every variation; their results, or None once cancelled."""
        job, count = client.submit(request), request.options.variations
        cancel_sent = False
        for message in client.events(job):
            # Checked per message: progress comes every denoising step, so a cancel waits at most one.
            if self.future.cancelled() and not cancel_sent:
                client.cancel(job)
                cancel_sent = True
            if message.type == MessageType.ACCEPTED:
                position = message.body["position"]
                self.future.set_update(Progress(f"Queued, position {position}" if position else "Starting", 0.0))
            elif message.type == MessageType.PROGRESS:
                self.future.set_update(self._progress(count, message.body))
            elif message.type == MessageType.RESULT and not self.future.cancelled():
                diagnostics = message.body["diagnostics"]
                return [Variation(arrays, diagnostics, self._write_previews(i, arrays))
                        for i, arrays in enumerate(result_arrays(message))]
            elif message.type == MessageType.ERROR:
                raise JobError(message.body["message"])
        return None  # CANCELLED, or a RESULT that came after the cancel

    def _progress(self, count: int, body: dict) -> Progress:
        """The worker's progress as the panel's: denoising (every variation at once) is the first
        nine tenths, the reconstruction of each variation the last tenth."""
        step, total, eta = body["step"], body["total"], body["eta_s"]
        done = step / max(total, 1)
        stage = f"{body['stage'].capitalize()} {step}/{total}"
        if body["stage"] == "denoise":
            if count > 1:
                stage += f" ({count} variations)"
            return Progress(stage, 0.9 * done, eta)
        # The worker times its denoising only; the reconstructions take about as long each.
        now = time.monotonic()
        if step == 0:
            self._reconstruct_started = now
        elif eta is None:
            eta = (now - self._reconstruct_started) / step * (total - step)
        return Progress(stage, 0.9 + 0.1 * done, eta)

    def _write_previews(self, i: int, arrays: dict) -> dict[str, tuple[str, int]]:
        """PNG frames of each video, the views tiled; {output: (first frame path, frame count)}."""
        from PIL import Image

        previews = {}
        for key, video in arrays.items():
            if not key.endswith("_video"):
                continue
            name = key[: -len("_video")]
            folder = os.path.join(self.spec.preview_dir, f"variation{i + 1}_{name}")
            os.makedirs(folder, exist_ok=True)
            frames = tile_views(video)
            paths = [os.path.join(folder, f"{name}_{t + 1:04d}.png") for t in range(len(frames))]
            for path, frame in zip(paths, frames):
                Image.fromarray(frame).save(path)
            previews[name] = (paths[0], len(paths))
        return previews

"""``animax-worker --view-parallel N``: one job at a time, each split by views over N GPUs.

N processes each load the same pipeline; process ``r`` uses ``cuda:r`` (NCCL), or the CPU (gloo)
where there is no GPU. Rank 0 is the ``animax-worker`` process itself: it runs the normal
worker (standalone or for a broker, unchanged) with a :class:`ViewParallelPipeline` as its
pipeline. Ranks 1..N-1 run :func:`follow`. Every call of the proxy is sent to the followers over
a pipe, and all ranks then run the same call under ``shard_views`` (each computes ``4 / N`` views
of every transformer forward), so that their schedulers, guidance and latents stay identical.

Why a pipe and not a collective for the calls: a follower waits for the next job for as long as
the worker is idle, and a collective wait would run into the process group's timeout (NCCL's
watchdog then kills the process); a pipe waits without limit and tells a follower when rank 0 is
gone (end of file). The process group carries only the work inside a call, where the ranks are
seconds apart at most; ``COLLECTIVE_TIMEOUT`` bounds that.

Cancel: after each denoising step every rank all-reduces its interrupt flag (MAX), so that a
cancel seen by rank 0 stops all ranks after the same step; one rank stopping alone would leave the
others waiting in the next gather.

Failures: a call refused for its inputs (``ValueError``, raised alike on every rank before any
collective) is an ordinary job error. Any other failure of a call, or a follower that exits,
leaves the ranks out of step for good: rank 0 logs why, the job gets an ``internal`` error (or,
on a GPU whose collective hangs, none: the client sees the worker stop answering, and a broker
re-queues the job), the worker stops and the process exits with status 1, to be restarted by
whoever runs it. A follower that loses rank 0 exits too.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import multiprocessing as mp
import os
import signal
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Callable

import torch
import torch.distributed as dist

from backend.model.view_parallel import shard_views
from backend.multi_gpu import turn_multicast_off

from .pipeline_loading import load_pipeline
from .standalone import serve

log = logging.getLogger("animax.view_parallel")
# How long a rank waits for the others inside a call before the job fails (gloo) or NCCL's
# watchdog ends the process: the ranks run in step, so a long wait means one is stuck or gone.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=2)
READY = "ready"


@dataclass(frozen=True)
class _GeneratorState:
    """A ``torch.Generator`` on its way to the followers (generators do not pickle)."""

    device: str
    state: bytes

    @classmethod
    def of(cls, generator: torch.Generator) -> "_GeneratorState":
        return cls(str(generator.device), generator.get_state().numpy().tobytes())

    def generator(self) -> torch.Generator:
        generator = torch.Generator(self.device)
        generator.set_state(torch.frombuffer(bytearray(self.state), dtype=torch.uint8))
        return generator


def _pack(kwargs: dict) -> dict:
    def pack(value):
        if isinstance(value, list):  # one generator a video
            return [pack(item) for item in value]
        return _GeneratorState.of(value) if isinstance(value, torch.Generator) else value
    return {k: pack(v) for k, v in kwargs.items()}


def _unpack(kwargs: dict) -> dict:
    def unpack(value):
        if isinstance(value, list):
            return [unpack(item) for item in value]
        return value.generator() if isinstance(value, _GeneratorState) else value
    return {k: unpack(v) for k, v in kwargs.items()}


def _call_in_step(pipeline, group: dist.ProcessGroup | None, callback: Callable | None, kwargs: dict):
    """``pipeline(**kwargs)`` with its transformer split by views over ``group``; after each step
    (and after ``callback``) the ranks agree on whether to stop."""
    flag = torch.zeros(1, device=pipeline.transformer.device)

    def on_step(pipe, step, timestep, tensors):
        if callback is not None:
            tensors = callback(pipe, step, timestep, tensors)
        flag.fill_(float(pipe.interrupt))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        pipe._interrupt = bool(flag.item())
        return tensors

    with shard_views(pipeline.transformer, group):
        return pipeline(**kwargs, callback_on_step_end=on_step)


class ViewParallelPipeline:
    """Rank 0's pipeline: each call runs on every rank of ``group``, split by views.

    Calls take keyword arguments only (as ``run_job`` makes them). ``callback_on_step_end`` runs on
    rank 0 only: it may set ``pipe._interrupt`` (cancel) but must not change the latents, which the
    other ranks would not see. Other attributes are the wrapped pipeline's.

    Args:
        pipeline: rank 0's ``AnimaXPipeline``, the same weights as the followers'.
        followers: one connection to each follower (rank order does not matter).
        group: the process group of all ranks; the default group when ``None``.
        on_broken: called with a sentence when the ranks can no longer work together.
    """

    def __init__(self, pipeline, followers: list[Connection], group: dist.ProcessGroup | None = None,
                 on_broken: Callable[[str], None] | None = None):
        self.pipeline, self.followers, self.group = pipeline, followers, group
        self.on_broken = on_broken
        self.broken: str | None = None  # why the ranks can no longer work together
        self._lock = threading.Lock()  # the compute thread and the launcher's watch may both find out

    def __getattr__(self, name: str):
        return getattr(self.pipeline, name)

    def mark_broken(self, reason: str) -> RuntimeError:
        """Record the first ``reason`` (calling ``on_broken`` with it); the error to raise."""
        with self._lock:
            first = self.broken is None
            if first:
                self.broken = reason
        if first and self.on_broken is not None:
            self.on_broken(reason)
        return RuntimeError(self.broken)

    def __call__(self, **kwargs):
        if self.broken is not None:
            raise RuntimeError(self.broken)
        callback = kwargs.pop("callback_on_step_end", None)
        call = _pack(kwargs)
        try:
            for connection in self.followers:
                connection.send(call)
        except OSError as exc:
            raise self.mark_broken(f"a view-parallel follower cannot be reached ({exc})") from exc
        try:
            return _call_in_step(self.pipeline, self.group, callback, kwargs)
        except ValueError:  # inputs refused alike on every rank, before any collective: the ranks are in step
            raise
        except Exception as exc:
            self.mark_broken(f"a view-parallel call failed on rank 0 and left the ranks out of step "
                             f"({type(exc).__name__}: {exc})")
            raise


def follow(pipeline, connection: Connection, group: dist.ProcessGroup | None = None) -> bool:
    """A follower's loop: run every call that rank 0 sends, split by views, until ``None`` comes
    (returns True) or rank 0 is gone (False). Raises what a call raises other than a refusal of its
    inputs."""
    pipeline.set_progress_bar_config(disable=True)
    rank = dist.get_rank(group)
    while True:
        try:
            call = connection.recv()
        except EOFError:
            log.error("rank %d: rank 0 is gone; exiting", rank)
            return False
        if call is None:
            return True
        kwargs = dict(_unpack(call), decode_rgb=False)  # the output is rank 0's; the RGB decode is its own
        steps = 0

        def count(pipe, step, timestep, tensors):
            nonlocal steps
            steps = step + 1
            return tensors

        try:
            output = _call_in_step(pipeline, group, count, kwargs)
        except ValueError as exc:
            log.info("rank %d: call refused like on rank 0: %s", rank, exc)
            continue
        log.info("rank %d: %s after %d of %d steps", rank, "stopped" if output.interrupted else "done", steps,
                 pipeline.num_timesteps)


def _device(rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(rank)  # "cuda" now means this rank's GPU, also to load_pipeline
        return torch.device("cuda", rank)
    return torch.device("cpu")


def _init_group(rank: int, world: int, store: dist.Store, device: torch.device) -> None:
    if device.type == "cuda":
        dist.init_process_group("nccl", store=store, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT,
                                device_id=device)
    else:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)


def _follower_main(rank: int, world: int, args: argparse.Namespace, connection: Connection) -> None:
    """A follower process: load, say ready, receive the store's port, follow."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches every process; rank 0 stops the others
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    device = _device(rank)
    pipeline, _ = load_pipeline(args)
    pipeline.to(device)
    connection.send(READY)
    log.info("rank %d ready (pid %d, %s)", rank, os.getpid(), device)
    try:
        port = connection.recv()
    except EOFError:  # rank 0 gave up before the process group started
        return
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=COLLECTIVE_TIMEOUT)
    _init_group(rank, world, store, device)
    if follow(pipeline, connection):  # not after losing rank 0: tearing down a broken NCCL group can block
        dist.destroy_process_group()


def _start_followers(args: argparse.Namespace, world: int) -> tuple[list[mp.Process], list[Connection]]:
    context = mp.get_context("spawn")  # CUDA cannot be forked
    processes, connections = [], []
    for rank in range(1, world):
        here, there = context.Pipe()
        process = context.Process(target=_follower_main, args=(rank, world, args, there),
                                  name=f"animax-view-parallel-{rank}", daemon=True)
        process.start()
        there.close()  # only the follower's end stays open there, so that each side sees the other's end
        processes.append(process)
        connections.append(here)
    return processes, connections


def _wait_ready(processes: list[mp.Process], connections: list[Connection]) -> None:
    """Until every follower has loaded its pipeline; RuntimeError naming one that exited first."""
    for process, connection in zip(processes, connections):
        try:
            connection.recv()  # READY; end of file once the follower is gone
        except EOFError:
            process.join()
            raise RuntimeError(f"view-parallel {process.name} exited while loading (status {process.exitcode})") \
                from None


def serve_view_parallel(args: argparse.Namespace, **options) -> None:
    """Run ``animax-worker`` with its jobs split over ``args.view_parallel`` processes until
    SIGINT / SIGTERM (``options`` as for ``serve``). Exits the process with status 1 when the
    processes can no longer work together."""
    world = args.view_parallel
    turn_multicast_off()  # before NCCL starts here, inherited by the followers
    processes, connections = _start_followers(args, world)
    device = _device(0)
    pipeline, preset = load_pipeline(args)
    pipeline.to(device)
    try:
        _wait_ready(processes, connections)
    except RuntimeError as exc:
        log.error("%s; see its log above", exc)
        _end(processes, connections, ok=False)  # exits
    # the master store on a free port; the followers learn it through their pipes
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, timeout=COLLECTIVE_TIMEOUT, wait_for_workers=False)
    for connection in connections:
        connection.send(store.port)
    _init_group(0, world, store, device)

    closing = threading.Event()

    def on_broken(reason: str) -> None:
        log.error("%s; stopping the worker", reason)
        os.kill(os.getpid(), signal.SIGTERM)  # stop as on SIGTERM: the worker sends what it has and returns

    def watch() -> None:
        running = {process.sentinel: process for process in processes}
        while running:
            for sentinel in wait(list(running)):
                process = running.pop(sentinel)
                process.join()  # its sentinel can fire before its exit status is there
                if not closing.is_set():
                    proxy.mark_broken(f"view-parallel {process.name} exited (status {process.exitcode})")

    proxy = ViewParallelPipeline(pipeline, connections, on_broken=on_broken)
    threading.Thread(target=watch, name="animax-view-parallel-watch", daemon=True).start()
    log.info("jobs split by views over %d processes (%s)", world, dist.get_backend())
    try:
        serve(args.address, proxy, preset=preset, **options)
    finally:
        closing.set()
        _end(processes, connections, ok=proxy.broken is None)


def _end(processes: list[mp.Process], connections: list[Connection], ok: bool) -> None:
    """Stop the followers: the sentinel, then terminate what is still running. Not ``ok``: exit(1) at
    once (no return), since a rank stuck in a collective cannot be joined and a broken NCCL group may
    block teardown."""
    if ok:
        for connection in connections:
            try:
                connection.send(None)
            except OSError:  # that follower is gone already
                pass
    for process in processes:
        process.join(30 if ok else 0)
        if process.is_alive():
            process.terminate()
            process.join(10)
    if not ok:
        logging.shutdown()
        os._exit(1)
    if dist.is_initialized():
        dist.destroy_process_group()

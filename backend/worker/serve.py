"""``animax-serve``: a shared GPU server as one address: a broker and one worker per GPU, kept running.

Each worker is its own process pinned to one GPU with ``CUDA_VISIBLE_DEVICES`` and connected to
the broker (``animax-worker --broker``). A process that exits, broker or worker, is started again
after a pause: a crashed or killed GPU process costs its job one retry (the broker re-queues it),
and a restarted broker costs the jobs it had (their clients hear no more heartbeats and report the
worker gone; its workers reconnect, backing off). SIGINT / SIGTERM stop everything (exit status
0); if a process cannot be started, or one keeps exiting right after it starts, everything is
stopped and ``animax-serve`` exits with status 1 for its own supervisor (systemd, a container) to
act on. NVLink multicast stays off in every process, because each starts with an environment of
its own.

Workers join the broker over CurveZMQ, as every worker must: ``animax-serve`` makes a key pair for
the broker and one for its workers in a folder of its own (mode 0700, removed when it exits), and
lists only that worker key in the broker's allow-list, so no other local process can join.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from animax_addon.core.client import DEFAULT_ADDRESS

from backend.arguments import ArgumentParser, curve_files_problem, full_model_problem, number, zmq_address
from backend.multi_gpu import MULTICAST_OFF

from .broker import DEFAULT_BACKEND
from .security import LinkKeys, check_address, link_keys

log = logging.getLogger("animax.serve")
RESTART_PAUSE_S = 2.0
EARLY_EXIT_S = 30.0  # a process that exits this soon after it started is failing to start ...
EARLY_EXITS = 3  # ... and this many of those in a row end the server with status 1


def parse_devices(spec: str) -> list[str]:
    """``all`` (every visible GPU), ``0,2`` (those GPUs) or ``cpu:N`` (N CPU workers, for tests and
    machines without a GPU) -> the CUDA_VISIBLE_DEVICES value of each worker ("" = no GPU)."""
    if spec.startswith("cpu:"):
        count = spec[4:]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--gpus cpu:N needs a positive N, got {spec!r}")
        return [""] * int(count)
    if spec == "all":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--gpus all found no CUDA GPU; name them (--gpus 0,1) or use --gpus cpu:N")
        return [str(i) for i in range(torch.cuda.device_count())]
    ids = [part.strip() for part in spec.split(",")]
    if not all(part.isdigit() for part in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"--gpus takes 'all', distinct GPU numbers like 0,1 or cpu:N, got {spec!r}")
    return ids


@dataclass
class _Process:
    name: str
    command: list[str]
    env: dict[str, str]
    popen: subprocess.Popen | None = None
    restarts: int = field(default=0)
    started_at: float = 0.0
    early_exits: int = 0  # exits in a row, each within EARLY_EXIT_S of its start

    def start(self) -> None:
        self.popen = subprocess.Popen(self.command, env=self.env)
        self.started_at = time.monotonic()
        log.info("%s started (pid %d)", self.name, self.popen.pid)


class Supervisor:
    """Starts the broker and the workers, restarts those that exit, stops them all."""

    def __init__(self, broker: list[str], workers: list[tuple[list[str], dict[str, str]]],
                 pause_s: float = RESTART_PAUSE_S):
        base = {**os.environ, **MULTICAST_OFF}
        self.broker = _Process("broker", broker, base)
        self.workers = [_Process(f"worker {i}", command, {**base, **env}) for i, (command, env) in
                        enumerate(workers)]
        self.pause_s = pause_s
        self._stop = threading.Event()

    def run(self) -> int:
        """Run until ``stop()`` (returns 0) or a failure (returns 1): a process could not be
        started, or one exited within ``EARLY_EXIT_S`` of its start ``EARLY_EXITS`` times in a row."""
        status = 1
        processes = [self.broker, *self.workers]
        try:
            for process in processes:
                process.start()
            while not self._stop.wait(0.2):
                exited = [p for p in processes if p.popen.poll() is not None]
                for process in exited:
                    early = time.monotonic() - process.started_at < EARLY_EXIT_S
                    process.early_exits = process.early_exits + 1 if early else 0
                if failing := [p for p in exited if p.early_exits >= EARLY_EXITS]:
                    log.error("%s exited %d times right after starting (status %s); stopping", failing[0].name,
                              EARLY_EXITS, failing[0].popen.returncode)
                    break
                for process in exited:
                    if self._stop.wait(self.pause_s):
                        break
                    log.warning("%s exited (status %s); starting it again (restart %d)", process.name,
                                process.popen.returncode, process.restarts + 1)
                    process.start()
                    process.restarts += 1  # counted once the new process exists, which readers then see
            else:
                status = 0
        except OSError as exc:
            log.error("cannot start a process: %s; stopping", exc)
        finally:
            started = [p for p in reversed(processes) if p.popen is not None]  # the workers first
            for process in started:
                if process.popen.poll() is None:
                    process.popen.terminate()
            for process in started:
                try:
                    process.popen.wait(10)
                except subprocess.TimeoutExpired:
                    process.popen.kill()
        return status

    def stop(self) -> None:
        self._stop.set()


def commands(args: argparse.Namespace, keys: LinkKeys) -> tuple[list[str], list[tuple[list[str], dict[str, str]]]]:
    """The broker's command line and each worker's command line and environment; ``keys`` secure
    the workers' link to the broker."""
    broker = [sys.executable, "-m", "backend.worker.broker", "--address", args.address, "--workers", args.workers,
              "--worker-secret", str(keys.broker_secret), "--allow-workers", str(keys.allow),
              "--queue-size", str(args.queue_size)]
    if args.curve_secret:
        broker += ["--curve-secret", args.curve_secret, "--allow", args.allow]
    worker = [sys.executable, "-m", "backend.worker.command", "--broker", args.workers, "--server-key",
              str(keys.broker_public), "--client-key", str(keys.worker_secret), "--model", args.model]
    if args.model == "full":
        worker += ["--wan", args.wan, "--adapter", args.adapter]
    return broker, [(worker, {"CUDA_VISIBLE_DEVICES": device}) for device in parse_devices(args.gpus)]


def main(argv: list[str] | None = None) -> int:
    """The exit status: 0 once stopped by SIGINT / SIGTERM, 1 when the server failed."""
    parser = ArgumentParser(prog="animax-serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", default="all", help="'all', GPU numbers like 0,1, or cpu:N (default all)")
    parser.add_argument("--address", type=zmq_address, default=DEFAULT_ADDRESS, help="the one address clients use")
    parser.add_argument("--workers", type=zmq_address, default=DEFAULT_BACKEND,
                        help="where workers meet the broker (CurveZMQ, with keys made for this run)")
    parser.add_argument("--queue-size", type=number(minimum=1), default=16)
    parser.add_argument("--model", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--wan", help="full: the local Wan2.1-T2V-1.3B directory")
    parser.add_argument("--adapter", help="full: the AnimaX adapter directory")
    parser.add_argument("--curve-secret", help="the broker's key (off loopback); needs --allow")
    parser.add_argument("--allow", help="folder of allowed client public keys")
    args = parser.parse_args(argv)
    if problem := full_model_problem(args.model, args.wan, args.adapter):
        parser.error(problem)
    if problem := curve_files_problem(args.curve_secret, args.allow):
        parser.error(problem)
    try:  # the broker would refuse them too, but as a child process restarted in a loop
        check_address(args.address, curve=args.curve_secret is not None)
        check_address(args.workers, curve=True)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="animax-serve-keys-") as folder:  # made 0700
        try:
            broker, workers = commands(args, link_keys(folder))
        except ValueError as exc:
            parser.error(str(exc))
        supervisor = Supervisor(broker, workers)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: supervisor.stop())
        log.info("AnimaX server on %s: a broker and %d workers", args.address, len(workers))
        return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())

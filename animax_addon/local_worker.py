"""The local worker: ``python -m backend.worker.command`` started from the user's AnimaX environment.

bpy-free. One worker per Blender session, started on the first Animate and stopped on unregister
and at exit; it listens on a free loopback port and logs to a file whose tail explains a crash.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import tempfile
from pathlib import Path

_LOG_TAIL_LINES = 8


def check_local_settings(python: str, project: str) -> None:
    """Raise ``ValueError`` with what to set when the local worker cannot be started."""
    if not python:
        raise ValueError("Set the Python executable of the environment where AnimaX is installed "
                         "(for example PROJECT/.venv/bin/python)")
    if not os.path.isfile(python) or not os.access(python, os.X_OK):
        raise ValueError(f"The Python executable '{python}' does not exist or cannot be run")
    if not project or not (Path(project) / "backend" / "worker" / "command.py").is_file():
        raise ValueError(f"The AnimaX project folder '{project}' does not hold backend/worker/command.py; "
                         "set it to the folder of the AnimaX checkout")


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalWorker:
    def __init__(self, python: str, project: str):
        check_local_settings(python, project)
        self.python, self.project = python, project
        self.address = f"tcp://127.0.0.1:{free_loopback_port()}"
        log = tempfile.NamedTemporaryFile(prefix="animax-worker-", suffix=".log", delete=False)
        self.log_path = log.name
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [project, os.environ.get("PYTHONPATH")])))
        # Blender's own Python settings must not leak into the worker's interpreter.
        for name in ("PYTHONHOME", "PYTHONSAFEPATH"):
            env.pop(name, None)
        with log:
            self.process = subprocess.Popen(
                [python, "-m", "backend.worker.command", "--address", self.address],
                cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )

    def running(self) -> bool:
        return self.process.poll() is None

    def exit_message(self) -> str:
        """A sentence about the worker's exit with the end of its log, for the panel."""
        try:
            lines = Path(self.log_path).read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        tail = " | ".join(lines[-_LOG_TAIL_LINES:]) or "no output"
        return (f"The local AnimaX worker stopped (exit code {self.process.returncode}): {tail}. "
                f"Full log: {self.log_path}")

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.running():
            self.process.terminate()  # the worker stops on SIGTERM after its current step
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_worker: LocalWorker | None = None


def ensure(python: str, project: str) -> LocalWorker:
    """The running local worker for these settings, started (or restarted) if needed."""
    global _worker
    if _worker is not None and _worker.running() and (_worker.python, _worker.project) == (python, project):
        return _worker
    stop()
    _worker = LocalWorker(python, project)
    return _worker


def current() -> LocalWorker | None:
    return _worker


def stop() -> None:
    global _worker
    if _worker is not None:
        _worker.stop()
        _worker = None


def register() -> None:
    atexit.register(stop)


def unregister() -> None:
    atexit.unregister(stop)
    stop()

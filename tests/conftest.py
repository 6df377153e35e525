"""Shared test settings.

- One OpenMP thread per test process: CI runs two pytest-xdist workers on 2 cores, and with tiny
  tensors two threads per process only wait on each other's barriers (a training test file took
  4 minutes instead of 25 s). Set before torch is imported; worker subprocesses inherit it.
- hypothesis draws the same examples on every run (CI included).
- `running`: start workers / brokers on threads (`Services`); stopped and joined, newest first,
  after the test.
"""

import os
import threading

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402 - after the thread setting, like every test module's torch
from hypothesis import settings  # noqa: E402

settings.register_profile("animax", derandomize=True, deadline=None, database=None)
settings.load_profile("animax")


class Services:
    """Workers and brokers run on daemon threads by ``start``; ``stop_all`` stops and joins them,
    newest first (workers before the broker they talk to)."""

    def __init__(self):
        self.started = []

    def start(self, service):
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        self.started.append((service, thread))
        return service

    def stop_all(self) -> None:
        for service, thread in reversed(self.started):
            service.stop()
            thread.join(30)


@pytest.fixture
def running():
    services = Services()
    yield services.start
    services.stop_all()

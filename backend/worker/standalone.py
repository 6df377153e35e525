"""A standalone ``animax-worker``: a broker in front of one worker, in one process.

Clients meet the broker (``broker.py``) as they meet any: it alone faces them. The worker
(``server.py``) joins it as every worker joins a broker, over an ``inproc://`` endpoint of a
ZeroMQ context the two share, with no CurveZMQ: nothing outside this process can reach an
inproc endpoint. The broker runs on a thread of its own; the worker's IO loop on the caller's.
"""

from __future__ import annotations

import logging
import signal
import threading

import zmq

from animax_addon.core.client import DEFAULT_ADDRESS
from animax_addon.core.protocol import Limits
from backend.model import TINY, Preset

from .broker import Broker
from .server import Worker, preset_body

log = logging.getLogger("animax.worker")


class Standalone:
    """Serves clients on ``address`` (loopback only without ``curve_secret`` and ``allow``) with
    ``pipeline``; ``queue_size``, ``liveness_s`` and the CurveZMQ options are the broker's."""

    def __init__(self, pipeline, address: str = DEFAULT_ADDRESS, *, queue_size: int = 8, heartbeat_s: float = 1.0,
                 liveness_s: float = 5.0, name: str = "animax-worker", preset: Preset = TINY,
                 limits: Limits = Limits(), curve_secret: str | None = None, allow: str | None = None):
        self._context = zmq.Context()
        try:
            self.broker = Broker(address, f"inproc://animax-broker-{id(self)}", worker_secret=None, worker_allow=None,
                                 queue_size=queue_size, heartbeat_s=heartbeat_s, liveness_s=liveness_s, name=name,
                                 limits=limits, curve_secret=curve_secret, allow=allow, preset=preset_body(preset),
                                 context=self._context)
        except (ValueError, zmq.ZMQError):
            self._context.term()
            raise
        self.worker = Worker(pipeline, self.broker.backend, heartbeat_s=heartbeat_s, name=name, preset=preset,
                             limits=limits, context=self._context)
        self.address = self.broker.address

    def job_states(self) -> dict[str, str]:
        """{job id: queued | running | done | failed | cancelled}, for tests and logs."""
        return self.broker.job_states()

    @property
    def started(self) -> list[str]:
        """The last job ids in the order they started running."""
        return self.broker.started

    def run(self) -> None:
        """Until ``stop()``: the worker first, then the broker, which sends on what the worker
        sent last (a job failed by the stop) before it closes."""
        thread = threading.Thread(target=self.broker.run, name="animax-broker", daemon=True)
        thread.start()
        try:
            self.worker.run()
        finally:
            self.broker.stop()
            thread.join(30)
            if not (self.worker.stuck or thread.is_alive()):  # term() would wait for their sockets forever
                self._context.term()  # waits for the broker's last replies to leave

    def stop(self) -> None:
        self.worker.stop()


def serve(address: str, pipeline, *, broker: str | None = None, queue_size: int = 8, name: str = "animax-worker",
          preset: Preset = TINY, curve_secret: str | None = None, allow: str | None = None,
          server_public_key: str | None = None, client_secret_file: str | None = None) -> None:
    """Run ``animax-worker`` until SIGINT or SIGTERM: a worker for the broker at ``broker``
    (joined with ``server_public_key`` and ``client_secret_file``), or standalone on ``address``."""
    if broker is None:
        service = Standalone(pipeline, address, queue_size=queue_size, name=name, preset=preset,
                             curve_secret=curve_secret, allow=allow)
        where = f"listening on {service.address}"
    else:
        service = Worker(pipeline, broker, name=name, preset=preset, server_public_key=server_public_key,
                         client_secret_file=client_secret_file)
        where = f"serving the broker at {broker}"
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: service.stop())
    log.info("AnimaX worker (%s) %s", preset.name, where)
    service.run()

"""The broker's fair job queue: round robin by client, admission, and the bounded record of
finished jobs.

Jobs are any objects with a hashable ``client`` and an integer ``seq`` (lower = older). The queue
is not thread-safe: the broker calls it from its one IO thread. A job table holds queued and
running jobs only; a finished job leaves it for a ``History`` of its id and outcome, so a
long-running broker keeps no finished job's prompt or images.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import OrderedDict
from typing import Callable, Hashable, Protocol

from animax_addon.core.protocol import ErrorCode, Message, MessageType, error_message

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED_HISTORY = 1000  # finished jobs whose id and outcome are remembered; the oldest is forgotten first
CLIENT_SHARE = 4  # one client may hold at most 1/CLIENT_SHARE of the queue's places (rounded up, at least 1)
SERVED_HISTORY = 1000  # clients whose last turn the fair queue remembers, beyond those it must keep


def client_cap(queue_size: int) -> int:
    """How many jobs one client may have waiting in a queue of ``queue_size`` places: a quarter,
    rounded up, at least 1 (2 of the worker's default 8, 4 of animax-serve's 16). Running jobs do
    not count: they hold no place in the queue, and a client alone may keep every idle worker busy."""
    return max(1, math.ceil(queue_size / CLIENT_SHARE))


class QueuedJob(Protocol):
    client: Hashable
    seq: int


class TrackedJob(QueuedJob, Protocol):
    id: str
    state: str


class History:
    """The outcomes of the last ``size`` finished jobs by ``(client, job id)``: ids and states only."""

    def __init__(self, size: int = FINISHED_HISTORY) -> None:
        self.size = size
        self._states: OrderedDict[tuple[Hashable, str], str] = OrderedDict()

    def get(self, client: Hashable, job_id: str) -> str | None:
        return self._states.get((client, job_id))

    def states(self) -> dict[str, str]:
        """{job id: outcome}, oldest first."""
        return {job_id: state for (_, job_id), state in self._states.items()}

    def finish(self, jobs: dict, job: TrackedJob, state: str) -> None:
        """Set ``job``'s final ``state``, take it out of the job table ``jobs`` and remember its outcome."""
        job.state = state
        key = (job.client, job.id)
        del jobs[key]
        self._states.pop(key, None)  # a reused job id counts as the newest
        self._states[key] = state
        while len(self._states) > self.size:
            self._states.popitem(last=False)

    def cannot_cancel(self, client: Hashable, job_id: str) -> Message:
        """The answer to a cancel of a job that is neither queued nor running."""
        state = self.get(client, job_id)
        where = f"it has already finished ({state})" if state is not None else "it is not queued or running"
        return error_message(ErrorCode.UNEXPECTED, f"Job '{job_id}' cannot be cancelled: {where}.", job_id)


class FairQueue:
    """Each turn goes to the client served least recently (never served first); ties go to the
    client whose oldest job came first. A client's own jobs run oldest first.

    The last turns of the ``remembered`` clients served most recently are kept, and older ones as
    long as a waiting client was served before them; a client whose turn is forgotten counts as
    never served."""

    def __init__(self, remembered: int = SERVED_HISTORY) -> None:
        self.remembered = remembered
        self._pending: dict[Hashable, list[QueuedJob]] = {}
        self._last_served: dict[Hashable, int] = {}  # oldest turn first
        self._turns = itertools.count()

    def __len__(self) -> int:
        return sum(len(jobs) for jobs in self._pending.values())

    def waiting(self, client: Hashable) -> int:
        """How many of ``client``'s jobs are queued."""
        return len(self._pending.get(client, ()))

    def push(self, job: QueuedJob) -> int:
        """Queue ``job`` (a re-queued job keeps its place by its old ``seq``); returns its position."""
        jobs = self._pending.setdefault(job.client, [])
        jobs.insert(bisect.bisect([j.seq for j in jobs], job.seq), job)
        return self.order().index(job)

    def remove(self, job: QueuedJob) -> bool:
        """Take ``job`` out of the queue; False when it was not queued."""
        jobs = self._pending.get(job.client, [])
        if job not in jobs:
            return False
        jobs.remove(job)
        if not jobs:
            del self._pending[job.client]
        return True

    def order(self) -> list[QueuedJob]:
        """The queued jobs in the order they will run."""
        pending = {who: list(jobs) for who, jobs in self._pending.items()}
        served = dict(self._last_served)
        order, turn = [], 0
        while pending:
            who = min(pending, key=lambda w: (served.get(w, -1), pending[w][0].seq))
            order.append(pending[who].pop(0))
            served[who] = 10**12 + turn  # after every real turn: this client is now the most recent
            turn += 1
            if not pending[who]:
                del pending[who]
        return order

    def pop(self) -> QueuedJob | None:
        """The next job, now counted as its client's turn; None when the queue is empty."""
        order = self.order()
        if not order:
            return None
        job = order[0]
        self.remove(job)
        self._last_served.pop(job.client, None)  # re-inserted: the newest turn goes last
        self._last_served[job.client] = next(self._turns)
        self._forget_old_turns()
        return job

    def _forget_old_turns(self) -> None:
        """Forget the oldest turns past the ``remembered`` newest, each only while it is older than
        every waiting client's last turn."""
        oldest_waiting = min((self._last_served[who] for who in self._pending if who in self._last_served),
                             default=math.inf)
        while len(self._last_served) > self.remembered:
            who, turn = next(iter(self._last_served.items()))
            if turn >= oldest_waiting:
                break
            # Every served client waiting was served after it: back, it ranks ahead of them, remembered or not.
            del self._last_served[who]


def admit(queue: FairQueue, jobs: dict, limit: int, client: Hashable, submit: Message,
          make_job: Callable[[], QueuedJob]) -> Message:
    """The answer to a SUBMIT: refused while its job id is still queued or running for this client
    (in the job table ``jobs``), when this client has ``client_cap(limit)`` jobs waiting already, or
    when ``limit`` jobs wait already (both ``queue_full``); otherwise ACCEPTED with the new job's
    place in ``queue`` (the job is recorded in ``jobs`` under ``(client, id)``)."""
    if (client, submit.job) in jobs:
        return error_message(ErrorCode.UNEXPECTED, f"Job '{submit.job}' is already queued or running; use a new "
                             "job id.", submit.job)
    waiting, cap = queue.waiting(client), client_cap(limit)
    if waiting >= cap:
        jobs_waiting = f"{waiting} job{'s' if waiting != 1 else ''} waiting"
        return error_message(ErrorCode.QUEUE_FULL, f"This client has {jobs_waiting}, the most one client may queue "
                             f"here ({cap} of {limit} places); wait for one to start and submit again.", submit.job)
    if len(queue) >= limit:
        return error_message(ErrorCode.QUEUE_FULL, ErrorCode.QUEUE_FULL.sentence, submit.job)
    job = make_job()
    jobs[(client, submit.job)] = job
    return Message(MessageType.ACCEPTED, submit.job, {"position": queue.push(job)})

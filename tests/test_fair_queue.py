"""The fair queue remembers few turns and serves waiting clients in the order it did when it remembered all."""

import itertools
from dataclasses import dataclass

from backend.worker.fair_queue import SERVED_HISTORY, FairQueue


@dataclass(eq=False)
class Job:
    client: str
    seq: int


class RememberingQueue(FairQueue):
    """The queue as it was before it forgot old turns: every client ever served keeps its last turn."""

    def _forget_old_turns(self) -> None:
        pass


def test_one_job_clients_leave_a_bounded_trace():
    queue, seq = FairQueue(), itertools.count()
    for n in range(10_000):
        queue.push(Job(f"client-{n}", next(seq)))
        assert queue.pop().client == f"client-{n}"
    assert len(queue._last_served) == SERVED_HISTORY


def run(queue: FairQueue) -> tuple[list[tuple[str, int]], int]:
    """A fixed mix: two clients keep two jobs waiting, one-job clients pass through, some come back
    long after their turn, one every few turns, one at once, and a client cancels its waiting job.
    The jobs in the order served, and the most turns the queue remembered."""
    seq, served, most = itertools.count(), [], 0
    for step in range(600):
        for heavy in ("heavy-a", "heavy-b"):
            while queue.waiting(heavy) < 2:
                queue.push(Job(heavy, next(seq)))
        if step == 0:
            queue.push(Job("eager", next(seq)))
        queue.push(Job(f"once-{step}", next(seq)))
        if step % 7 == 0 and step >= 100:
            queue.push(Job(f"once-{step - 90}", next(seq)))
        if step % 4 == 1:
            queue.push(Job("now-and-then", next(seq)))
        if step % 11 == 0:
            cancelled = Job(f"cancels-{step}", next(seq))
            queue.push(cancelled)
            queue.remove(cancelled)
        for _ in range(4):
            job = queue.pop()
            served.append((job.client, job.seq))
            most = max(most, len(queue._last_served))
            if job.client == "eager":  # back at once, before the clients waiting since its turn
                queue.push(Job("eager", next(seq)))
    while len(queue):
        job = queue.pop()
        served.append((job.client, job.seq))
    return served, most


def test_forgetting_old_turns_keeps_the_order_of_service():
    remembered, everyone = run(RememberingQueue())
    forgotten, most = run(FairQueue(remembered=2))
    assert forgotten == remembered
    assert everyone > 600 and most <= 8  # 2, and those since the longest-waiting client's turn


def test_a_forgotten_client_counts_as_never_served():
    """The one difference, for a client with nothing queued whose turn is gone: back, it goes ahead of
    every waiting client served since, as before, but among clients never served by its job's age."""
    queues = RememberingQueue(remembered=1), FairQueue(remembered=1)
    for queue in queues:
        queue.push(Job("old", 0))
        queue.pop()
        queue.push(Job("waiting", 1))
        queue.push(Job("waiting", 2))
        queue.pop()  # "waiting" is served after "old", and "old" has nothing queued: it is forgotten
        queue.push(Job("old", 3))
        queue.push(Job("new", 4))
    remembering, forgetting = ([job.client for job in queue.order()] for queue in queues)
    assert remembering == ["new", "old", "waiting"]
    assert forgetting == ["old", "new", "waiting"]

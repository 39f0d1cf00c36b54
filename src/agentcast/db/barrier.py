"""The commit barrier of a group-commit writer: wait until what began has been delivered.

A reader can see a commit a moment before the event loop runs that commit's
``on_commit`` callbacks (they are handed over after ``COMMIT`` returns). A
decision that reads state those callbacks maintain — the runner's slots,
freed by the terminal event's commit listener — after learning of the commit
elsewhere (a status read) awaits :meth:`CommitBarrier.wait` first. Both
databases (SQLite's writer thread, PostgreSQL's writer task) count the groups
whose ``COMMIT`` has begun and mark them delivered here.
"""

from __future__ import annotations

import asyncio

__all__ = ["CommitBarrier"]


class CommitBarrier:
    """Groups whose ``COMMIT`` began, groups delivered, and who waits for which.

    :attr:`begun` may be advanced from the writer's thread (an int write);
    :meth:`settle` and :meth:`wait` run on the event loop.
    """

    def __init__(self) -> None:
        #: Groups whose ``COMMIT`` has begun: a reader may see them from then on.
        self.begun = 0
        self._settled = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def wait(self) -> None:
        """Wait until every group begun so far has been delivered.

        Cheap when nothing is pending; never waits for groups begun later.
        """
        target = self.begun
        if self._settled >= target:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        await waiter

    def settle(self, begun: int | None = None) -> None:
        """Groups up to ``begun`` (default: all begun) were delivered, or never will be."""
        upto = self.begun if begun is None else begun
        if upto <= self._settled:
            return
        self._settled = upto
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for target, waiter in self._waiters:
            if target <= upto:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                keep.append((target, waiter))
        self._waiters = keep

"""Following a thread again after its follower ended: one rule for every transport.

A follower can end in two ways (:mod:`agentcast.log.follower`):

* :class:`HistoryLost` — events after its cursor were trimmed before it read
  them. The reader is still wanted, so it follows again from its
  ``(epoch, cursor)``; the log resolves that position (``resolve_start``) and,
  the history being gone, the new start says ``recovered: false`` and where
  delivery really restarts. The transport tells its client with a
  ``subscribed`` message: never a silent gap (docs/architecture.md invariant 2).
* :class:`FollowerClosed` — the follower, or the log under it, was closed.
  Following again would only fail or resurrect something that was stopped on
  purpose, so the reader stops (and the transport decides whether that is
  quiet or a "come back later" to its client).

WebSocket subscriptions, terminal-event forwards and SSE streams all apply
this rule; keeping it here keeps their recovery behaviour from drifting apart.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

from ..log.base import Follower
from ..log.follower import FollowerClosed, HistoryLost

__all__ = ["FOLLOWER_ENDINGS", "Follows", "follows_again", "refollow", "replace_follower"]

logger = logging.getLogger(__name__)

#: The exceptions with which ``next_batch`` says the follower has ended
#: (for ``except FOLLOWER_ENDINGS as ending``); other errors are not endings.
FOLLOWER_ENDINGS: Final = (HistoryLost, FollowerClosed)


class Follows(Protocol):
    """What re-following needs of the bridge (a protocol, so tests can fake it)."""

    async def follow(
        self, thread_id: str, after_seq: int = 0, epoch: str | None = None
    ) -> Follower:
        """Follow ``thread_id`` from a position (resolved by the log)."""
        ...


def follows_again(ending: HistoryLost | FollowerClosed) -> bool:
    """Whether a follower's ending is a reason to follow again (``True``) or to stop.

    Only lost history is: the reader still wants the thread and the log is
    there. A closed follower was stopped by its owner or by the log closing.
    """
    return isinstance(ending, HistoryLost)


async def refollow(bridge: Follows, thread_id: str, epoch: str | None, cursor: int) -> Follower:
    """Follow ``thread_id`` again from ``(epoch, cursor)``.

    The position is passed to the log unchanged, so it applies the same
    recovery rules as to a client's resume: ``start.recovered`` is false and
    ``start.after_seq`` moves forward when the events after ``cursor`` are gone.
    """
    return await bridge.follow(thread_id, cursor, epoch)


async def replace_follower(bridge: Follows, thread_id: str, old: Follower) -> Follower:
    """Follow again from where ``old`` stood, then close ``old``; return the new follower.

    The new follower is opened first and handed back only once ``old`` is
    closed: should either step fail or be cancelled, ``old`` is still the
    owner's follower (its usual cleanup closes it) and the new one is closed
    here, so neither leaks.
    """
    new = await refollow(bridge, thread_id, old.start.epoch, old.cursor)
    try:
        await old.aclose()
    except BaseException:
        await new.aclose()
        raise
    return new

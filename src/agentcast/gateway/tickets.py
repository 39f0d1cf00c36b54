"""One-use WebSocket tickets, bounded per user and in all, never evicting anyone's.

A browser cannot set headers on a WebSocket, so it trades its token for a
short-lived ticket (``POST /v1/ws-ticket``) and puts that in the URL. Tickets
live in this process's memory: one is redeemed on the gateway that issued it,
moments later.

Bounds (docs/architecture.md invariant 6): a user holds at most
``max_tickets_per_user`` unused, unexpired tickets (429 ``limit_exceeded``
beyond); the store holds at most :data:`MAX_TICKETS` of all users, and when it
is full a new ticket is refused (503 ``unavailable``). Neither bound ever
evicts a ticket already issued: the old store dropped the oldest ticket when
full, so one user's flood could break another user's connect.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from ..errors import LimitExceeded, Unavailable

__all__ = ["MAX_TICKETS", "TicketStore"]

#: Outstanding tickets of all users kept at most; beyond, new ones are refused (503).
MAX_TICKETS: Final = 10_000
#: The metric label of a refusal by the store's total bound (it is not a setting).
MAX_TICKETS_NAME: Final = "max_tickets_total"
PER_USER_NAME: Final = "max_tickets_per_user"

P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class _Ticket(Generic[P]):
    user_id: str
    holder: P
    expires_at: float  # on the store's clock


class TicketStore(Generic[P]):
    """Tickets by id, each for one user's ``holder`` (the authenticator's principal).

    Args:
        ttl_s: A ticket's lifetime.
        per_user: Unused tickets one user may hold (``max_tickets_per_user``).
        clock: Monotonic clock (tests pass a fake one).
        on_refused: Called with the bound's name on every refusal (a metric).
        max_total: Tickets of all users kept at most (:data:`MAX_TICKETS`).
    """

    def __init__(
        self,
        ttl_s: float,
        per_user: int,
        clock: Callable[[], float],
        on_refused: Callable[[str], None],
        max_total: int = MAX_TICKETS,
    ) -> None:
        self.ttl_s = ttl_s
        self.per_user = per_user
        self.max_total = max_total
        self.on_refused = on_refused
        self._clock = clock
        # Every ticket, oldest first: they share one TTL, so insertion order is
        # expiry order and a purge stops at the first one still valid.
        self._tickets: OrderedDict[str, _Ticket[P]] = OrderedDict()
        self._of_user: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._tickets)

    def issue(self, user_id: str, holder: P) -> str:
        """A new ticket for ``holder``; expired and redeemed tickets do not count.

        Raises:
            LimitExceeded: the user already holds ``per_user`` tickets (429).
            Unavailable: the store holds ``max_total`` tickets (503; its message
                is marked ``client_safe``: it holds no internals).
        """
        now = self._clock()
        self._purge(now)
        if len(self._of_user.get(user_id, ())) >= self.per_user:
            self.on_refused(PER_USER_NAME)
            raise LimitExceeded(
                f"too many unused WebSocket tickets (at most {self.per_user}): "
                "use one or let it expire",
                limit=PER_USER_NAME,
            )
        if len(self._tickets) >= self.max_total:
            self.on_refused(MAX_TICKETS_NAME)
            raise Unavailable(
                "the server holds too many WebSocket tickets; retry shortly", client_safe=True
            )
        ticket = secrets.token_urlsafe(32)
        self._tickets[ticket] = _Ticket(user_id, holder, now + self.ttl_s)
        self._of_user.setdefault(user_id, set()).add(ticket)
        return ticket

    def redeem(self, ticket: str) -> P | None:
        """Consume ``ticket``: its holder, or ``None`` if unknown, used or expired."""
        entry = self._tickets.pop(ticket, None)
        if entry is not None:
            self._forget(ticket, entry)
        now = self._clock()
        if entry is None or entry.expires_at <= now:
            self._purge(now)
            return None
        return entry.holder

    def held(self, user_id: str) -> int:
        """How many unused, unexpired tickets ``user_id`` holds."""
        self._purge(self._clock())
        return len(self._of_user.get(user_id, ()))

    # Private methods

    def _purge(self, now: float) -> None:
        while self._tickets:
            ticket, entry = next(iter(self._tickets.items()))
            if entry.expires_at > now:
                break
            del self._tickets[ticket]
            self._forget(ticket, entry)

    def _forget(self, ticket: str, entry: _Ticket[P]) -> None:
        held = self._of_user.get(entry.user_id)
        if held is not None:
            held.discard(ticket)
            if not held:
                del self._of_user[entry.user_id]

"""The size bound of one event: ``max_event_bytes``, checked at ``Bridge.emit``.

Why at emit, before the log: an appended event is sent to every viewer of its
thread, and one larger than a viewer's send budget would close that viewer as a
slow consumer (4008) every time it came back — the thread could never be read
again. Refused at emit, only the agent that produced it hears about it
(:class:`~agentcast.errors.EventTooLarge`), and nothing is appended.

What is measured is what will be sent: the stored envelope (``events``
module docstring), built by :func:`agentcast.events.encode_envelope` around the
payload bytes that ``emit`` already has. Every envelope field is known at
emit except ``seq``, which is counted at its widest (19 digits, ``2**63 - 1``),
so the stored event is never larger than the bound, and at most 18 bytes
smaller than an event the check refuses. The payload is not encoded again; the
envelope around it is measured by an upper bound that needs no encoding
(every character of a string costs at most 6 bytes in JSON, ``\\u00XX``), and
only an event within a few KiB of the bound has its envelope encoded exactly.
"""

from __future__ import annotations

from typing import Final

from .errors import EventTooLarge
from .events import encode_envelope, encode_payload

__all__ = [
    "MAX_SEQ",
    "check_event_size",
    "check_start_message",
    "envelope_bytes",
]

#: The largest seq of a stream: its decimal form is the widest a seq can take.
MAX_SEQ: Final = 2**63 - 1
#: The widest ``ts`` JSON can hold (a float's longest repr): only for the fast bound.
_WIDEST_TS: Final = -1.7976931348623157e308
#: The most bytes one character of a string takes once JSON-encoded (``\\u001f``).
_MAX_BYTES_PER_CHAR: Final = 6


def _envelope_base() -> int:
    """The envelope around empty strings, with the widest seq and ts and no data."""
    widest = encode_envelope(
        event_type="", event_id="", thread_id="", run_id="", parent_run_id="",
        seq=MAX_SEQ, ts=_WIDEST_TS, agent="", data=b"0",
    )  # fmt: skip
    return len(widest) - 1


_ENVELOPE_BASE: Final = _envelope_base()
#: ``null`` instead of ``""``: two bytes more.
_NULL_EXTRA: Final = 2


def envelope_bytes(
    payload: bytes,
    *,
    event_type: str,
    event_id: str,
    thread_id: str,
    run_id: str,
    parent_run_id: str | None,
    agent: str | None,
    ts: float,
) -> int:
    """The exact size of the stored envelope of ``payload``, with ``seq`` at its widest."""
    return len(
        encode_envelope(
            event_type=event_type, event_id=event_id, thread_id=thread_id, run_id=run_id,
            parent_run_id=parent_run_id, seq=MAX_SEQ, ts=ts, agent=agent, data=payload,
        )
    )  # fmt: skip


def check_event_size(
    payload: bytes,
    max_bytes: int,
    *,
    event_type: str,
    event_id: str,
    thread_id: str,
    run_id: str,
    parent_run_id: str | None,
    agent: str | None,
    ts: float,
) -> None:
    """Refuse an event whose stored envelope would exceed ``max_bytes``.

    Raises:
        EventTooLarge: the event, as it would be stored and sent, is larger
            than ``max_bytes`` (the ``max_event_bytes`` setting). The message
            names the event type, its size, the bound and the setting.
    """
    strings = (event_type, event_id, thread_id, run_id, parent_run_id, agent)
    bound = _ENVELOPE_BASE + len(payload)
    for s in strings:
        bound += _NULL_EXTRA if s is None else _MAX_BYTES_PER_CHAR * len(s)
    if bound <= max_bytes:
        return  # the common case: no encoding at all
    size = envelope_bytes(
        payload, event_type=event_type, event_id=event_id, thread_id=thread_id, run_id=run_id,
        parent_run_id=parent_run_id, agent=agent, ts=ts,
    )  # fmt: skip
    if size > max_bytes:
        raise EventTooLarge(
            f"the {event_type} event is {size} bytes encoded, over the limit of {max_bytes} "
            f"bytes (setting max_event_bytes, AGENTCAST_MAX_EVENT_BYTES); nothing was appended"
        )


#: The widest id or agent name an envelope can carry (``events.Name``): the
#: ids of a run not yet created are measured at this width.
_WIDEST_NAME: Final = "x" * 256


def check_start_message(message: str, max_event_bytes: int) -> None:
    """Refuse a run (or sub-run) whose ``agent_started`` could not be appended.

    The run's input travels in its ``agent_started``; checked before the run
    exists (its ids measured at their widest), a run never starts whose first
    event the bridge would refuse: it would then end without a start,
    breaking the one-story rule.

    Raises:
        EventTooLarge: the message is too large for ``max_event_bytes``.
    """
    payload = encode_payload("agent_started", {"message": message})
    try:
        check_event_size(
            payload, max_event_bytes, event_type="agent_started", event_id=_WIDEST_NAME,
            thread_id=_WIDEST_NAME, run_id=_WIDEST_NAME, parent_run_id=_WIDEST_NAME,
            agent=_WIDEST_NAME, ts=_WIDEST_TS,
        )  # fmt: skip
    except EventTooLarge as exc:
        raise EventTooLarge(f"message too large: {exc.message}") from None

"""The scripted model answers of the LLM benchmark, shared by every process in it.

A run's user message is a small JSON object (:class:`RunScript`) naming the
run, the wall-clock time ``t0`` of its first token, the pace and the token
count. The replay server (``bench/llm_replay.py``) builds the answer from that
message alone, so each request gets its own script whatever order the
concurrent requests arrive in; the viewers (``bench/llm_load.py``) and the
bare-SDK baseline (``bench/llm_bare.py``) derive the same expected text from
the same message. Token ``i`` reads ``"<run>.<i> "``: a receiver that splits a
coalesced ``text_delta`` on spaces recovers each token's index, hence its due
time ``t0 + i / tokens_per_s`` on the open-loop schedule, without sharing a
clock object with the sender (both read ``time.time()`` on the same machine).

This module imports nothing from agentcast or the SDK, so every process of the
benchmark can use it cheaply.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Final

__all__ = ["LLM_AGENT", "MODEL", "RunScript"]

#: The ChatAgent's registered name (``bench/llm_agents.py``).
LLM_AGENT: Final = "bench_llm"
#: The model name sent with every request (the replay server ignores it).
MODEL: Final = "replay-bench"


@dataclass(frozen=True, slots=True)
class RunScript:
    """One run's scripted answer: ``tokens`` tokens due from ``t0`` at ``tokens_per_s``."""

    run: str
    t0: float
    tokens_per_s: float
    tokens: int

    def encode(self) -> str:
        """The user message that carries the script (what ``start_agent`` sends)."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, message: str) -> RunScript:
        """The script of a user message; ``ValueError`` if it is not one."""
        data = json.loads(message)
        if not isinstance(data, dict):
            raise ValueError("not a run script")
        return cls(
            run=str(data["run"]),
            t0=float(data["t0"]),
            tokens_per_s=float(data["tokens_per_s"]),
            tokens=int(data["tokens"]),
        )

    def token(self, i: int) -> str:
        """Token ``i``'s text: the run's name and the index, space-terminated."""
        return f"{self.run}.{i} "

    def pieces(self) -> list[str]:
        """Every token's text, in order."""
        return [self.token(i) for i in range(self.tokens)]

    def text(self) -> str:
        """The whole answer, exactly as a viewer must end up with it."""
        return "".join(self.pieces())

    def due(self, i: int) -> float:
        """When token ``i`` is due to leave the model (wall clock, seconds)."""
        return self.t0 + i / self.tokens_per_s

    @property
    def end(self) -> float:
        """When the last token is due."""
        return self.due(self.tokens - 1)

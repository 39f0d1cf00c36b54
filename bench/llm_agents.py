"""The LLM benchmark's agent: a plain ``ChatAgent`` over the replay model server.

Served with ``agentcast serve --agents bench.llm_agents:registry`` (beside
``bench.agents:registry`` for W1). Nothing is special-cased for the
benchmark: the agent is what docs/llm.md shows, with its ``base_url`` taken
from ``AGENTCAST_LLM_BASE_URL`` (the replay server's address, set by
``bench/llm_bench.py``) and every other setting at its default — the
30 ms text coalescing window of ``ctx.say`` included.
"""

from __future__ import annotations

from bench.llm_script import LLM_AGENT, MODEL

from agentcast.agents import AgentRegistry
from agentcast.llm import ChatAgent

__all__ = ["registry"]

#: Served by ``agentcast serve --agents bench.llm_agents:registry``.
registry = AgentRegistry()
registry.register(ChatAgent(LLM_AGENT, model=MODEL, description="The LLM benchmark's agent."))

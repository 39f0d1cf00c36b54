"""Agents that think with a model: :class:`ChatAgent` over OpenAI-compatible Chat Completions.

Importing this package does not import ``openai``; building a
:class:`ChatAgent` does, and says how to install it when it is missing
(``pip install agentcast[openai]``). docs/llm.md is the guide.
"""

from __future__ import annotations

from .chat_agent import ChatAgent
from .errors import (
    LlmBadStream,
    LlmChunkTimeout,
    LlmConnectionError,
    LlmError,
    LlmFirstTokenTimeout,
    LlmMaxSteps,
    LlmProviderError,
    LlmRateLimited,
)
from .tools_schema import openai_tools

__all__ = [
    "ChatAgent",
    "LlmBadStream",
    "LlmChunkTimeout",
    "LlmConnectionError",
    "LlmError",
    "LlmFirstTokenTimeout",
    "LlmMaxSteps",
    "LlmProviderError",
    "LlmRateLimited",
    "openai_tools",
]

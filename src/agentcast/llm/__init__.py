"""Agents that think with a model: :class:`ChatAgent` over OpenAI-compatible Chat Completions.

Importing this package does not import ``openai``; building a
:class:`ChatAgent` does, and says how to install it when it is missing
(``pip install agentcast[openai]``). The local model (:class:`LocalModel`,
``agentcast[local]``) is imported on first use of its name, and never imports
``llama_cpp`` before it generates. docs/llm.md is the guide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .chat_agent import ChatAgent
from .errors import (
    LlmBadStream,
    LlmChunkTimeout,
    LlmConnectionError,
    LlmError,
    LlmFirstTokenTimeout,
    LlmMaxSteps,
    LlmOutputTruncated,
    LlmProviderError,
    LlmRateLimited,
)
from .tools_schema import openai_tools

if TYPE_CHECKING:
    from .local import LocalClient, LocalModel, LocalModelNotInstalled, locate_model

#: Names of :mod:`agentcast.llm.local`, imported when first asked for.
_LOCAL = frozenset({"LocalClient", "LocalModel", "LocalModelNotInstalled", "locate_model"})

__all__ = [
    "ChatAgent",
    "LlmBadStream",
    "LlmChunkTimeout",
    "LlmConnectionError",
    "LlmError",
    "LlmFirstTokenTimeout",
    "LlmMaxSteps",
    "LlmOutputTruncated",
    "LlmProviderError",
    "LlmRateLimited",
    "LocalClient",
    "LocalModel",
    "LocalModelNotInstalled",
    "locate_model",
    "openai_tools",
]


def __getattr__(name: str) -> Any:
    if name in _LOCAL:
        from . import local

        return getattr(local, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

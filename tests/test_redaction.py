"""Secret redaction: one rule (``events.SECRET_KEY_EXAMPLES``), for keys and for text.

The table in ``agentcast.events`` is the rule; these tests check every row of
it against :func:`is_secret_key`, :func:`redact` (keys of tool parameters and
custom values) and :func:`sanitize_text` (``key=value`` pairs in error
messages), and that the cases the rule was written for are rows of it.
"""

from __future__ import annotations

import pytest

from agentcast.agents.sanitize import sanitize_text
from agentcast.events import REDACTED, SECRET_KEY_EXAMPLES, is_secret_key, redact

#: The cases the rule must keep (the issue that fixed it): they must stay in the table.
MUST_REDACT = (
    "secret_key", "SECRET_KEY", "secretKey", "aws_secret_access_key", "access_key",
    "signing_key", "passcode", "private_key", "client_secret", "api_key", "cookie",
    "authorization", "password", "session_token",
)  # fmt: skip
MUST_KEEP = (
    "max_tokens", "total_tokens", "prompt_tokens", "token_count", "keyword", "monkey",
    "primary_key", "sessions_total", "tokenizer",
)  # fmt: skip

SECRET = "hunter2"
CASES = [pytest.param(key, secret, id=key) for key, secret in SECRET_KEY_EXAMPLES]


def test_the_table_holds_every_required_case() -> None:
    table = dict(SECRET_KEY_EXAMPLES)
    assert len(table) == len(SECRET_KEY_EXAMPLES)  # no key twice, with two answers
    assert {k: table.get(k) for k in MUST_REDACT} == dict.fromkeys(MUST_REDACT, True)
    assert {k: table.get(k) for k in MUST_KEEP} == dict.fromkeys(MUST_KEEP, False)


@pytest.mark.parametrize(("key", "secret"), CASES)
def test_is_secret_key(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


@pytest.mark.parametrize(("key", "secret"), CASES)
def test_redact_replaces_exactly_the_secret_values_at_any_depth(key: str, secret: bool) -> None:
    params = {key: SECRET, "nested": [{key: SECRET, "q": 1}], "q": "x"}
    expected = REDACTED if secret else SECRET
    assert redact(params) == {key: expected, "nested": [{key: expected, "q": 1}], "q": "x"}
    assert params[key] == SECRET  # the input is not modified


@pytest.mark.parametrize(("key", "secret"), CASES)
@pytest.mark.parametrize(
    "template",
    ["{key}={value}", "failed: {key}: {value}, retrying", '{{"{key}": "{value}"}}'],
    ids=["equals", "colon", "json"],
)
def test_text_pairs_follow_the_same_rule(key: str, secret: bool, template: str) -> None:
    text = template.format(key=key, value=SECRET)
    expected = template.format(key=key, value=REDACTED) if secret else text
    assert sanitize_text(text) == expected


def test_text_examples() -> None:
    assert sanitize_text("password=hunter2") == f"password={REDACTED}"
    assert sanitize_text("max_tokens=5") == "max_tokens=5"
    assert sanitize_text("max_tokens=5 api_key=abc123 keyword=x") == (
        f"max_tokens=5 api_key={REDACTED} keyword=x"
    )

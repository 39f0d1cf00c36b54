"""Error messages sent to clients carry no paths and no secrets (tool_completed, agent_error)."""

from __future__ import annotations

import time

import pytest

from agentcast.agents import sanitize_error
from agentcast.agents.sanitize import sanitize_text
from agentcast.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No such file: '/home/alice/app/config.yaml'", "No such file: '<path>'"),
        ('File "/usr/lib/python3.11/x.py", line 3', 'File "<path>", line 3'),
        ("C:\\Users\\bob\\secret.txt not found", "<path> not found"),
        ("\\\\server\\share\\x failed", "<path> failed"),
        ("see src/agentcast/x.py line 3", "see <path> line 3"),
        ("~/.ssh/id_rsa: denied", "<path>: denied"),
        ("file:///etc/passwd", "<path>"),
        (
            "GET https://api.example.com/v1?api_key=abc&q=1",
            "GET https://api.example.com/v1?api_key=[REDACTED]&q=1",
        ),
        ("password=hunter2 user=bob", "password=[REDACTED] user=bob"),
        ('{"client_secret": "a b", "n": 1}', '{"client_secret": "[REDACTED]", "n": 1}'),
        ("Authorization: Bearer abc.def", "Authorization: Bearer [REDACTED]"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic [REDACTED]"),
        ("postgres://app:s3cret@db:5432/x", "postgres://app:[REDACTED]@db:5432/x"),
        ("bad key sk-abcdefghijklmnop1234", "bad key [REDACTED]"),
        ("jwt eyJhbGciOi.eyJzdWIiOiJ4.c2ln", "jwt [REDACTED]"),
        ("max_tokens=10, 1.5/2.5 and/or 2025/03/01", "max_tokens=10, 1.5/2.5 and/or 2025/03/01"),
        ("unexpected token in JSON at 12:30", "unexpected token in JSON at 12:30"),
    ],
)
def test_sanitize_text(text: str, expected: str) -> None:
    assert sanitize_text(text) == expected


def test_sanitize_error_uses_message_and_falls_back_to_type() -> None:
    assert sanitize_error(FileNotFoundError(2, "No such file", "/srv/app/x.csv")) == (
        "[Errno 2] No such file: '<path>'"
    )
    assert sanitize_error(KeyError()) == "KeyError"
    assert sanitize_error(InvalidInput("token=abc is wrong")) == "token=[REDACTED] is wrong"
    assert len(sanitize_error(ValueError("x" * 5000))) == 1000


@pytest.mark.parametrize("unit", ["a", "a.", "=A", "a1", "C:\\", "/a", 'x="', "a: "])
def test_sanitize_stays_fast_on_hostile_input(unit: str) -> None:
    # Long runs that make naive unanchored patterns backtrack quadratically.
    text = unit * (20_000 // len(unit))
    started = time.perf_counter()
    assert len(sanitize_text(text)) <= 1000
    assert time.perf_counter() - started < 0.2

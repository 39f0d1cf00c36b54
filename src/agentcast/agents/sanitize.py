"""Make an exception's message safe to put in an event.

Error messages travel to clients (``tool_completed.error``,
``agent_error.message``) and stay in the log forever, so they must not leak
where the server's code lives or anything that looks like a credential. An
exception text is the most common way both escape: ``FileNotFoundError``
names a path, an HTTP client echoes a URL with ``?api_key=…``, a driver
prints a DSN with a password.

What is removed:

* file paths: absolute POSIX paths (``/home/x/app.py``, ``~/x``), Windows
  paths (``C:\\x\\y``, ``\\\\server\\share``), ``file://`` URLs and relative
  paths that name a file (``src/app/x.py``) become ``<path>``;
* secrets: the value of any ``key=value`` / ``key: value`` pair whose key
  looks secret (:func:`agentcast.events.is_secret_key`, the same rule and
  table as for keys of tool parameters), ``Bearer``/``Basic``
  credentials, URL user-info passwords, well-known token shapes (``sk-…``,
  ``ghp_…``, ``xox…``, ``AKIA…``, JWTs) and long random-looking strings
  become ``[REDACTED]``.

The result is also cut to :data:`MAX_MESSAGE_CHARS`.
"""

from __future__ import annotations

import re
from typing import Final

from .. import events
from ..errors import AgentcastError

__all__ = ["MAX_MESSAGE_CHARS", "PATH_PLACEHOLDER", "sanitize_error", "sanitize_text"]

MAX_MESSAGE_CHARS: Final = 1000
#: Only this much of a message is scanned: it bounds the regexes' work on
#: hostile input (the result is cut to MAX_MESSAGE_CHARS anyway).
_MAX_SCAN_CHARS: Final = 4 * MAX_MESSAGE_CHARS
PATH_PLACEHOLDER: Final = "<path>"

# key=value, key: value, "key": "value", key='value' — the key decides. A value
# may start with an HTTP auth scheme ("Authorization: Bearer x"): the scheme is
# kept and what follows it is redacted.
_KEY_VALUE: Final = re.compile(
    r"""(?<![\w.-])(?P<q>["']?)(?P<key>[A-Za-z_][\w.-]*)(?P=q)(?P<sep>\s*(?:=|:(?!//))\s*)"""
    r"""(?P<scheme>(?:Bearer|Basic|Digest|Token|bearer)\s+)?"""
    r"""(?P<value>"[^"]{0,512}"|'[^']{0,512}'|[^\s,;&)}\]]{1,512})"""
)
_AUTH_SCHEME: Final = re.compile(
    r"\b(?:(?P<scheme>[Bb]earer)\s+[\w.~+/=-]+|(?P<basic>Basic)\s+(?=\S*[0-9=+/])[\w.~+/=-]{6,})"
)
_URL_USERINFO: Final = re.compile(
    r"(?<![a-z0-9+.-])(?P<head>[a-z][a-z0-9+.-]*://[^\s:/@]+):[^\s@/]+@", re.I
)
_TOKEN_SHAPES: Final = re.compile(
    r"""
      \bsk-[A-Za-z0-9_-]{16,}                      # OpenAI-style keys
    | \b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{16,}
    | \bxox[abprs]-[A-Za-z0-9-]{10,}               # Slack
    | \bAKIA[0-9A-Z]{16}\b                         # AWS access key id
    | \beyJ[\w-]{5,}\.[\w-]{5,}\.[\w-]*            # JWT
    | (?P<generic>(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_=-]{40,})  # see _redact_token
    """,
    re.VERBOSE,
)
_FILE_URL: Final = re.compile(r"\bfile://\S+", re.IGNORECASE)
_WINDOWS_PATH: Final = re.compile(
    r"""(?:\b[A-Za-z]:\\|\\\\[\w.$-]+\\)[^\s"'<>|*?\r\n]*""",
)
_POSIX_PATH: Final = re.compile(
    r"""(?<![\w.:/~-])~?/(?:[\w.@+-]+/)*[\w.@+-]+/?""",
)
_RELATIVE_FILE: Final = re.compile(r"(?<![\w./-])(?:[\w.-]+/)+[\w.-]+\.[A-Za-z]\w{0,7}\b")


def _redact_pairs(text: str) -> str:
    """Redact the value of every secret-looking ``key=value`` pair.

    A scan, not ``re.sub``: when a pair's key is harmless, scanning resumes at
    its value, because the value may itself start another pair
    (``"file.py: password=x"``).
    """
    out: list[str] = []
    pos = 0
    while match := _KEY_VALUE.search(text, pos):
        if not events.is_secret_key(match["key"]):
            out.append(text[pos : match.start("value")])
            pos = match.start("value")
            continue
        value = match["value"]
        quote = value[0] if value[0] in "\"'" else ""
        out.append(text[pos : match.start("value")])
        out.append(f"{quote}{events.REDACTED}{quote}")
        pos = match.end()
    out.append(text[pos:])
    return "".join(out)


def _redact_token(match: re.Match[str]) -> str:
    token = match["generic"]
    if token and not (any(c.isdigit() for c in token) and any(c.isalpha() for c in token)):
        return token  # long but of one kind (a rule of dashes, a number): not a key
    return events.REDACTED


def sanitize_text(text: str) -> str:
    """Remove paths and secret-looking values from ``text`` (see module doc)."""
    text = text[:_MAX_SCAN_CHARS]
    text = _redact_pairs(text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m['scheme'] or m['basic']} {events.REDACTED}", text)
    text = _URL_USERINFO.sub(lambda m: f"{m['head']}:{events.REDACTED}@", text)
    text = _TOKEN_SHAPES.sub(_redact_token, text)
    text = _FILE_URL.sub(PATH_PLACEHOLDER, text)
    text = _WINDOWS_PATH.sub(PATH_PLACEHOLDER, text)
    text = _POSIX_PATH.sub(PATH_PLACEHOLDER, text)
    text = _RELATIVE_FILE.sub(PATH_PLACEHOLDER, text)
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "…"
    return text


def sanitize_error(exc: BaseException) -> str:
    """The message of ``exc``, safe to send to a client.

    The exception's type is not included (``agent_error`` carries it in
    ``error_type``); an exception without a message is described by its type
    name so that the text is never empty.
    """
    raw = exc.message if isinstance(exc, AgentcastError) else str(exc)
    text = sanitize_text(raw).strip()
    return text or type(exc).__name__

"""The one error table: complete, one exception tree, and the docs and the JS agree with it.

Why these tests exist: the error codes, HTTP statuses, titles and close codes
used to be spread over several modules, docs/protocol.md and the JavaScript
client, and they drifted (the JS lacked 1011 and called 1009 ``TOO_LARGE``).
Now :data:`agentcast.errors.ERRORS` and :data:`~agentcast.errors.CLOSES` are
the only source, and every copy of them is compared here, exactly.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from pathlib import Path

import msgspec
import pytest
from starlette.exceptions import HTTPException

import agentcast
from agentcast import errors
from agentcast.errors import (
    CLOSE_CODE_EXPLANATIONS,
    CLOSES,
    ERROR_CODE_EXPLANATIONS,
    ERRORS,
    NO_RECONNECT_CLOSE_CODES,
    AgentcastError,
    AuthError,
    ClientError,
    CloseCode,
    ErrorCode,
    InternalError,
    NotFound,
    RateLimited,
    Unavailable,
    spec_of,
)
from agentcast.gateway.problems import (
    PROBLEM_CONTENT_TYPE,
    BadRequest,
    PayloadTooLarge,
    error_problem,
    http_exception_problem,
    internal_problem,
    problem,
)

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL_MD = ROOT / "docs" / "protocol.md"
WEB = ROOT / "src" / "agentcast" / "web"
#: Where the JavaScript client keeps its wire constants.
PROTOCOL_JS = WEB / "protocol.js"


# --- the table ---------------------------------------------------------------------------


def test_every_error_code_has_exactly_one_row() -> None:
    assert list(ERRORS) == list(ErrorCode)
    assert {code: spec.meaning for code, spec in ERRORS.items()} == ERROR_CODE_EXPLANATIONS


def test_every_close_code_has_exactly_one_row() -> None:
    assert list(CLOSES) == list(CloseCode)
    assert {code: spec.meaning for code, spec in CLOSES.items()} == CLOSE_CODE_EXPLANATIONS
    assert {CloseCode.UNAUTHORIZED} == NO_RECONNECT_CLOSE_CODES


def test_rows_are_well_formed() -> None:
    for code, spec in ERRORS.items():
        assert 400 <= spec.http_status <= 599, code
        assert spec.title, code
        assert spec.meaning.endswith("."), code
        assert spec.close_code is None or spec.close_code in CLOSES, code
    # Titles are how a person tells problems apart: one per code.
    assert len({spec.title for spec in ERRORS.values()}) == len(ERRORS)


def test_spec_of_accepts_plain_strings_and_misses_unknown_codes() -> None:
    assert spec_of("not_found") is ERRORS[ErrorCode.NOT_FOUND]
    assert spec_of("disconnected") is None


def test_retryable_comes_from_the_table() -> None:
    for code, spec in ERRORS.items():
        exc = AgentcastError("x")
        exc.code = code
        assert exc.retryable is spec.retryable, code
        assert exc.error_spec is spec
    assert RateLimited().retryable
    assert Unavailable().retryable
    assert not NotFound().retryable
    assert not ClientError("timeout", "no reply").retryable  # not a wire code


def test_default_message_is_the_rows_meaning() -> None:
    assert NotFound().message == ERRORS[ErrorCode.NOT_FOUND].meaning
    assert str(InternalError()) == ERRORS[ErrorCode.INTERNAL].meaning


# --- one exception tree ------------------------------------------------------------------


def _agentcast_exceptions() -> set[type[BaseException]]:
    """Every exception class defined in an importable agentcast module."""
    for info in pkgutil.walk_packages(agentcast.__path__, "agentcast."):
        if info.name.endswith("__main__"):
            continue  # running it would start the CLI
        try:
            importlib.import_module(info.name)
        except ImportError:
            continue  # an optional extra that is not installed
    found: set[type[BaseException]] = set()
    todo: list[type[BaseException]] = [BaseException]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in found:
                todo.append(sub)
                # A private class is one module's control flow and never leaves it
                # (agentcast.db.postgres's group retry and outage signals).
                if sub.__module__.split(".")[0] == "agentcast" and not sub.__name__.startswith("_"):
                    found.add(sub)
    return found


def test_every_agentcast_exception_is_in_the_tree_and_drawn() -> None:
    classes = _agentcast_exceptions()
    assert AuthError in classes
    assert ClientError in classes
    outside = sorted(c.__qualname__ for c in classes if not issubclass(c, AgentcastError))
    assert outside == [], "every agentcast exception derives from AgentcastError"
    doc = errors.__doc__ or ""
    undrawn = sorted(c.__name__ for c in classes if not re.search(rf"\b{c.__name__}\b", doc))
    assert undrawn == [], "draw them in the tree of agentcast/errors.py's docstring"


def test_auth_and_client_errors_keep_their_old_homes_and_shapes() -> None:
    from agentcast.client import ClientError as FromClient
    from agentcast.gateway.auth import AuthError as FromAuth

    assert FromClient is ClientError
    assert FromAuth is AuthError
    exc = ClientError("disconnected", "the connection dropped")
    assert (exc.code, exc.message, str(exc)) == (
        "disconnected",
        "the connection dropped",
        "disconnected: the connection dropped",
    )
    assert (AuthError("no").code, AuthError("no").status_code) == (ErrorCode.UNAUTHORIZED, 401)
    forbidden = AuthError("nope", status_code=403)
    assert (forbidden.code, forbidden.status_code, forbidden.reason) == (
        ErrorCode.FORBIDDEN,
        403,
        "nope",
    )


# --- HTTP problems answer from the table -------------------------------------------------


_AUTH = (ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN)


def _body(response: object) -> dict[str, object]:
    body = msgspec.json.decode(response.body)  # type: ignore[attr-defined]
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize("code", [c for c in ErrorCode if c is not ErrorCode.INTERNAL])
def test_error_problem_status_title_and_retry_after_come_from_the_row(code: ErrorCode) -> None:
    spec = ERRORS[code]
    exc = AuthError("why", spec.http_status) if code in _AUTH else AgentcastError("why")
    exc.code = code
    response = error_problem(exc)
    body = _body(response)
    assert response.status_code == spec.http_status
    assert response.media_type == PROBLEM_CONTENT_TYPE
    assert body == {
        "type": f"urn:agentcast:problem:{code}",
        "title": spec.title,
        "status": spec.http_status,
        "detail": "why",
        "code": code.value,
    }
    assert ("retry-after" in response.headers) is spec.retryable
    assert ("www-authenticate" in response.headers) is (code is ErrorCode.UNAUTHORIZED)


def test_internal_problem_reveals_nothing() -> None:
    spec = ERRORS[ErrorCode.INTERNAL]
    for response in (error_problem(InternalError("secret: db password")), internal_problem()):
        body = _body(response)
        assert (response.status_code, body["title"]) == (spec.http_status, spec.title)
        assert body["detail"] == spec.meaning


def test_unknown_code_answers_as_internal() -> None:
    response = error_problem(ClientError("disconnected", "gone"))
    assert response.status_code == ERRORS[ErrorCode.INTERNAL].http_status


def test_class_status_overrides_only_the_status() -> None:
    for exc, status in ((BadRequest("bad cursor"), 400), (PayloadTooLarge("big"), 413)):
        response = error_problem(exc)
        assert response.status_code == status
        assert _body(response)["title"] == ERRORS[ErrorCode.INVALID_MESSAGE].title


def test_problem_title_for_a_code_outside_the_table() -> None:
    assert _body(problem(418, "teapot", "short and stout"))["title"] == "Error"


# --- docs/protocol.md --------------------------------------------------------------------


def _doc_table(marker: str) -> list[list[str]]:
    """The rows (cells stripped) of the Markdown table right after ``<!-- marker: ...-->``."""
    lines = PROTOCOL_MD.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"<!-- {marker}:"))
    rows = []
    for line in lines[start + 3 :]:  # skip the marker, the header and the rule
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_doc_error_table_equals_the_python_table() -> None:
    expected = [
        [
            f"`{code}`",
            spec.meaning,
            str(spec.http_status),
            spec.title,
            "—" if spec.close_code is None else str(int(spec.close_code)),
            "yes" if spec.retryable else "no",
        ]
        for code, spec in ERRORS.items()
    ]
    assert _doc_table("error-table") == expected


def test_doc_close_table_equals_the_python_table() -> None:
    rows = _doc_table("close-table")
    got = [(int(r[0]), r[1].strip("`"), r[3].strip("*").startswith("yes")) for r in rows]
    expected = [(int(code), code.name, spec.reconnect) for code, spec in CLOSES.items()]
    assert got == expected


def test_doc_status_list_agrees_with_the_table() -> None:
    """The per-situation status list may refine a status, never contradict a code's own."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    pairs = re.findall(r"^\| (\d{3}) \| `(\w+)` \|", text, flags=re.MULTILINE)
    assert pairs
    listed = {code for _, code in pairs}
    assert listed <= {code.value for code in ErrorCode}
    for code in listed:  # unknown_type is WebSocket-only, so not every code is listed
        assert (str(ERRORS[ErrorCode(code)].http_status), code) in pairs, code


# --- the JavaScript client's constants ---------------------------------------------------


def _js_object(name: str) -> dict[str, object]:
    """``export const NAME = Object.freeze({...});`` of agentcast.js, as a dict."""
    text = PROTOCOL_JS.read_text(encoding="utf-8")
    match = re.search(rf"export const {name} = Object\.freeze\(\{{(.*?)\}}\);", text, re.DOTALL)
    assert match, f"protocol.js has no frozen object {name}"
    body = re.sub(r"(\w+):", r'"\1":', match.group(1).strip().rstrip(","))
    value = json.loads("{" + body + "}")
    assert isinstance(value, dict)
    return value


def test_js_close_codes_equal_the_table() -> None:
    assert _js_object("CloseCode") == {code.name: int(code) for code in CloseCode}


def test_js_error_codes_equal_the_table() -> None:
    assert _js_object("ErrorCode") == {code.name: code.value for code in ErrorCode}


def test_js_uses_no_bare_close_code_literals() -> None:
    """Every web module names close codes through ``CloseCode``; only protocol.js defines them."""
    literals = {str(int(c)) for c in CloseCode if c is not CloseCode.NORMAL}  # 1000 ms…
    found = []
    for path in sorted(WEB.glob("*.js")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.lstrip().startswith(("*", "/", "//")):
                continue
            if path == PROTOCOL_JS and re.match(r"\s+[A-Z_]+: \d", line):
                continue  # the definitions themselves
            if set(re.findall(r"\b\d{4}\b", line)) & literals:
                found.append(f"{path.name}: {line.strip()}")
    assert found == []


def test_python_src_uses_no_bare_close_code_literals() -> None:
    """Close codes are written as ``CloseCode`` members or read from the table."""
    src = ROOT / "src" / "agentcast"
    literals = "|".join(str(int(c)) for c in CloseCode if c is not CloseCode.NORMAL)
    pattern = re.compile(rf"(?:close\(|code=|fail\()\s*(?:{literals})\b")
    offenders = []
    for path in sorted(src.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(src)}:{number}: {line.strip()}")
    assert offenders == []


def test_starlette_errors_take_the_code_of_their_status() -> None:
    not_found = http_exception_problem(HTTPException(404, "Not Found"))
    assert _body(not_found)["title"] == ERRORS[ErrorCode.NOT_FOUND].title
    assert _body(http_exception_problem(HTTPException(405)))["code"] == "invalid_message"
    assert http_exception_problem(HTTPException(502)).status_code == 500

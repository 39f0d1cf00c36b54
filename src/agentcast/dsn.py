"""Database URLs: telling PostgreSQL's from the rest, and never showing a password.

``AGENTCAST_DATABASE_URL`` is a libpq-style URL (``postgresql://user:pw@host/db``).
It carries a password more often than not, and URLs end up in logs, error
messages, ``agentcast settings`` and reprs; every place that shows one shows
:func:`mask_dsn` of it instead.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["POSTGRES_SCHEMES", "is_postgres_url", "mask_dsn"]

#: The schemes libpq and asyncpg accept.
POSTGRES_SCHEMES: Final = frozenset({"postgresql", "postgres"})
#: Query parameters that are secrets too (libpq's ``password`` and ``sslpassword``).
_SECRET_PARAMS: Final = frozenset({"password", "sslpassword"})
_MASK: Final = "***"


def is_postgres_url(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database."""
    return urlsplit(url).scheme.lower() in POSTGRES_SCHEMES


def mask_dsn(url: str) -> str:
    """``url`` with its password (in the authority or the query) replaced by ``***``.

    Anything that does not parse as a URL is masked whole: better to show
    nothing than a password.
    """
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return _MASK
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{_MASK}@{hostinfo}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key in _SECRET_PARAMS for key, _ in pairs):
            query = urlencode(
                [(k, _MASK if k in _SECRET_PARAMS else v) for k, v in pairs], safe="*"
            )
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment))

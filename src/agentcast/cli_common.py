"""What the ``agentcast`` commands share: failing loudly, settings from flags, options.

Kept apart from :mod:`agentcast.cli` so that the command modules
(:mod:`agentcast.cli_admin` for the maintenance commands) can use them
without importing the command line they are part of.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from .gateway.settings import GatewaySettings

__all__ = [
    "EXIT_INTERRUPTED",
    "DataDirOption",
    "TokenOption",
    "UrlOption",
    "fail",
    "settings_from",
    "show",
]

#: Exit code after Ctrl-C (128 + SIGINT), as shells expect.
EXIT_INTERRUPTED: Final = 130


def show(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def fail(message: str, code: int = 1) -> NoReturn:
    Console(stderr=True).print(
        f"[bold red]agentcast:[/] {message}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(code)


def settings_from(**flags: Any) -> GatewaySettings:
    """Settings from the environment, then the flags that were given."""
    try:
        return GatewaySettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        fail(f"invalid setting: {exc}", code=2)


DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data directory (SQLite, lock, dev secret and token).",
        envvar="AGENTCAST_DATA_DIR",
        show_default=False,
    ),
]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="AGENTCAST_URL",
        help="Server base URL. Default: http://AGENTCAST_HOST:AGENTCAST_PORT.",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="AGENTCAST_TOKEN",
        help="JWT to authenticate with. Default: the dev token in <data-dir>/dev-token.",
        show_default=False,
    ),
]

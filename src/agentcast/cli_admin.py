"""The maintenance commands: ``agentcast db …`` and ``agentcast settings``.

They act on a data directory or on the settings, never on a running server;
:func:`register` adds them to the command line.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from .cli_common import DataDirOption, fail, settings_from, show
from .errors import DataDirLocked

if TYPE_CHECKING:
    from .db.sqlite import SqliteDatabase

__all__ = ["db_app", "register", "rotate_epochs", "settings_command", "upgrade"]


def register(app: typer.Typer) -> None:
    """Add ``db`` and ``settings`` to ``app``."""
    app.add_typer(db_app, name="db")
    app.command("settings")(settings_command)


# --- db ------------------------------------------------------------------------------

db_app = typer.Typer(
    help="Maintain the database: the data directory's SQLite file, or PostgreSQL "
    "(--database-url): schema upgrades, epoch rotation after a restore.",
    no_args_is_help=True,
)


DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="AGENTCAST_DATABASE_URL",
        help="The PostgreSQL database (postgresql://…). Default: the setting database_url.",
        show_default=False,
    ),
]


@db_app.command("rotate-epochs")
def rotate_epochs(data_dir: DataDirOption = None, database_url: DatabaseUrlOption = None) -> None:
    """Give every stream a new epoch, so that clients resume with recovered: false.

    A step of the restore procedure (docs/operations.md, "Backup and restore"):
    a restored database lacks the events appended after its copy was taken, so
    the positions clients hold could name other events. Run it after restoring
    and before starting the server; it refuses while a server holds the data
    directory (SQLite) or runs agents on the database (PostgreSQL, with
    --database-url or AGENTCAST_DATABASE_URL).
    """
    from .db.sqlite import SqliteDatabase
    from .errors import AgentcastError

    settings = settings_from(data_dir=data_dir)
    url = database_url or settings.database_url
    if url:
        _rotate_postgres_epochs(url, settings.pg_connect_timeout_s)
        return
    db = SqliteDatabase(settings.data_dir)
    if not db.path.is_file():
        fail(f"no database at {db.path}: nothing to rotate (check --data-dir)")
    try:
        rotated = asyncio.run(_rotate_epochs(db))
    except DataDirLocked as exc:
        holder = exc.message.split("; ")[0]  # without the advice to use another directory
        fail(
            f"cannot rotate epochs while the data directory is in use: {holder}. "
            "Stop the server first: rotate-epochs runs between restoring the files and "
            "starting the server."
        )
    except AgentcastError as exc:
        fail(exc.message)
    typer.echo(
        f"{rotated} streams in {db.path} got a new epoch; clients will resume with recovered: false"
    )


async def _rotate_epochs(db: SqliteDatabase) -> int:
    """Open ``db`` rotating every epoch (before anything else is written), close it cleanly."""
    await db.open(rotate_epochs=True)
    try:
        return db.streams_rotated
    finally:
        await db.close()


def _rotate_postgres_epochs(url: str, timeout_s: float) -> None:
    from .dsn import is_postgres_url, mask_dsn
    from .errors import AgentcastError

    if not is_postgres_url(url):
        fail(f"--database-url must be a postgresql:// URL, not {mask_dsn(url)}")
    try:
        rotated = asyncio.run(_rotate_postgres(url, timeout_s))
    except DataDirLocked as exc:
        fail(
            f"cannot rotate epochs while a server runs agents on the database: {exc.message}. "
            "Stop every server first: rotate-epochs runs between the restore and the start."
        )
    except AgentcastError as exc:
        fail(exc.message)
    except Exception as exc:  # unreachable server, bad URL: reported with the URL masked
        fail(f"cannot rotate epochs on {mask_dsn(url)}: {type(exc).__name__}: {exc}")
    typer.echo(
        f"{rotated} streams in {mask_dsn(url)} got a new epoch; "
        "clients will resume with recovered: false"
    )


async def _rotate_postgres(url: str, timeout_s: float) -> int:
    """Under the runner lock (no server may run agents meanwhile), open rotating every epoch."""
    from .db.pg_runner_lock import RunnerLock
    from .db.postgres import PostgresDatabase

    lock = RunnerLock(url, connect_timeout_s=timeout_s)
    await lock.acquire()
    try:
        db = PostgresDatabase(url, pool_max_size=1, connect_timeout_s=timeout_s)
        await db.open(rotate_epochs=True)
        try:
            return db.streams_rotated
        finally:
            await db.close()
    finally:
        await lock.release()


@db_app.command("upgrade")
def upgrade(database_url: DatabaseUrlOption = None) -> None:
    """Apply the PostgreSQL schema migrations this agentcast ships (each once, in order).

    Servers never change a shared schema themselves: they refuse to start on an
    older one and ask for this command. Safe to run while servers are up and
    from several places at once (an advisory lock serialises it).
    """
    from .dsn import is_postgres_url, mask_dsn

    url = database_url or settings_from().database_url
    if not url or not is_postgres_url(url):
        fail("db upgrade needs a postgresql:// URL (--database-url or AGENTCAST_DATABASE_URL)")
    try:
        applied = asyncio.run(_upgrade(url))
    except Exception as exc:  # any failure: reported with the URL masked
        fail(f"cannot upgrade {mask_dsn(url)}: {type(exc).__name__}: {exc}")
    if applied:
        typer.echo(f"{mask_dsn(url)}: applied migrations {', '.join(map(str, applied))}")
    else:
        typer.echo(f"{mask_dsn(url)}: the schema is up to date")


async def _upgrade(url: str) -> list[int]:
    import asyncpg

    from .db.pg_migrate import apply_migrations

    conn = await asyncpg.connect(url, timeout=settings_from().pg_connect_timeout_s)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()


# --- settings ------------------------------------------------------------------------


def settings_command(
    host: Annotated[str | None, typer.Option(help="As for serve.", show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="As for serve.", show_default=False)] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="As for serve.", show_default=False)
    ] = None,
    log_backend: Annotated[
        Literal["sqlite", "memory"] | None,
        typer.Option(help="As for serve.", show_default=False),
    ] = None,
    sqlite_synchronous: Annotated[
        Literal["FULL", "NORMAL"] | None,
        typer.Option(help="As for serve.", show_default=False),
    ] = None,
    shutdown_grace: Annotated[
        float | None, typer.Option(help="As for serve.", show_default=False)
    ] = None,
) -> None:
    """Print every setting's effective value and where it came from: default, environment, flag.

    Takes the flags of `serve`, so `agentcast settings --port 9000` shows what
    `agentcast serve --port 9000` would run with. Secrets (the JWT secret, the
    public key) are printed as ***. Exits 2, naming each bad field, when a value
    breaks its rule.
    """
    # The flags deliberately have no envvar= (unlike serve's): a value read
    # from the environment must be reported as "environment", not "flag".
    from .dsn import mask_dsn
    from .settings import SECTIONS, InvalidSetting, env_name, is_dsn, is_secret, load_settings

    try:
        model, origins = load_settings(
            host=host,
            port=port,
            data_dir=data_dir,
            log_backend=log_backend,
            sqlite_synchronous=sqlite_synchronous,
            shutdown_grace_s=shutdown_grace,
        )
    except InvalidSetting as exc:
        fail(f"invalid setting: {exc.message}", code=2)
    for section, section_model in SECTIONS.items():
        typer.echo(f"[{section}]")
        values = getattr(model, section)
        for name in section_model.model_fields:
            value = getattr(values, name)
            if is_secret(name) and value is not None:
                shown = "***"
            elif is_dsn(name) and isinstance(value, str):
                shown = mask_dsn(value)
            else:
                shown = show(value)
            typer.echo(f"  {env_name(name)}={shown}  ({origins[name]})")

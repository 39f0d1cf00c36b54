"""Database URLs are recognised, and their passwords never shown."""

from __future__ import annotations

import pytest

from agentcast.config import EngineSettings
from agentcast.dsn import is_postgres_url, mask_dsn
from agentcast.settings import InvalidSetting, load_settings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://app:s3cret@db:5432/agentcast?sslmode=require",
            "postgresql://app:***@db:5432/agentcast?sslmode=require",
        ),
        ("postgres://:s3cret@db/x", "postgres://:***@db/x"),
        ("postgresql://app@db/x", "postgresql://app@db/x"),
        ("postgresql://db/x?password=s3cret&sslmode=verify-full", None),
        ("postgresql://app:s3cret@[::1]:5432/x", "postgresql://app:***@[::1]:5432/x"),
        ("postgresql://app:s3cret@db:notaport/x", "***"),
    ],
)
def test_mask_dsn_hides_every_password(url: str, shown: str | None) -> None:
    masked = mask_dsn(url)
    assert "s3cret" not in masked
    if shown is not None:
        assert masked == shown
    else:
        assert masked == "postgresql://db/x?password=***&sslmode=verify-full"


def test_postgres_urls_are_told_apart() -> None:
    assert is_postgres_url("postgresql://db/x")
    assert is_postgres_url("POSTGRES://db/x")
    assert not is_postgres_url("sqlite:///x.db")
    assert not is_postgres_url("/var/lib/agentcast")


def test_engine_settings_repr_masks_the_password() -> None:
    settings = EngineSettings(database_url="postgresql://app:s3cret@db/x")
    assert "s3cret" not in repr(settings)
    assert "postgresql://app:***@db/x" in repr(settings)


def test_a_bad_database_setting_never_echoes_the_password() -> None:
    with pytest.raises(InvalidSetting) as info:
        load_settings(database_url="postgresql://app:s3cret@db/x", pg_pool_max_size=0)
    assert "s3cret" not in str(info.value)


def test_a_database_url_must_be_postgres_and_not_beside_the_memory_log() -> None:
    with pytest.raises(InvalidSetting) as info:
        load_settings(database_url="mysql://app:s3cret@db/x")
    assert "postgresql://" in str(info.value)
    assert "s3cret" not in str(info.value)
    with pytest.raises(InvalidSetting, match="contradict"):
        load_settings(database_url="postgresql://db/x", log_backend="memory")

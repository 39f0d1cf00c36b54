"""Server settings: flags and ``AGENTCAST_*`` environment variables, one table.

:class:`GatewaySettings` is the flat view of :class:`agentcast.settings.AgentcastSettings`:
it inherits the fields of every section (engine, log, gateway, auth, agents),
so each setting is declared once, with one default and one rule, and the
gateway reads the whole environment in one pass. It stays flat and mutable
because callers and tests use it so (``GatewaySettings(data_dir=…, jwt_secret=…)``,
``settings.port``). Every field is documented in ``docs/operations.md``.
"""

from __future__ import annotations

from dataclasses import fields

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..config import EngineSettings
from ..settings import (
    ENV_PREFIX,
    SECTIONS,
    AgentcastSettings,
    AgentsSection,
    AuthSection,
    EngineSection,
    GatewaySection,
    LlmSection,
    LogSection,
    check_consistency,
)

__all__ = ["GatewaySettings"]


class GatewaySettings(
    BaseSettings, LlmSection, AgentsSection, EngineSection, LogSection, AuthSection, GatewaySection
):
    """What the network side of agentcast can be told (and, flat, everything else).

    pydantic collects fields from the last base to the first, so this order lists
    the gateway's own fields first (``agentcast --help`` prints them in this order).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    @model_validator(mode="after")
    def _consistent(self) -> GatewaySettings:
        check_consistency(dict(self))
        return self

    def engine_settings(self) -> EngineSettings:
        """The engine's view of these settings (environment and arguments alike)."""
        return EngineSettings(**{f.name: getattr(self, f.name) for f in fields(EngineSettings)})

    def nested(self) -> AgentcastSettings:
        """These settings grouped by section (the one settings model)."""
        return AgentcastSettings.model_validate(
            {
                section: self.model_dump(include=set(model.model_fields))
                for section, model in SECTIONS.items()
            }
        )

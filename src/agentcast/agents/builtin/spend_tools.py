"""The demo's tools: ``@tool`` wrappers over :mod:`.spend_data` and the bundled data.

They are real tools — typed parameters with bounds, validated arguments,
docstrings that become the descriptions a model would read — so the demo shows
exactly what an application's own tools look like on the wire.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from ..tools import ToolSpec, tool
from . import spend_data
from .spend_data import Dimension

__all__ = [
    "SPEND_TOOLS",
    "cost_breakdown",
    "draft_report",
    "savings_from_caching",
    "savings_from_cheaper_models",
    "usage_metrics",
]

Days = Annotated[int, msgspec.Meta(ge=1, le=90)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]


@tool
def usage_metrics(team: str | None = None, days: Days = 30) -> dict[str, Any]:
    """Spend, requests, tokens and prompt-cache hit rate over the last days of the data.

    Args:
        team: Only this team (e.g. "search"); every team when omitted.
        days: The window, counted back from the last day in the data.
    """
    return spend_data.usage_metrics(spend_data.load_usage(), team=team, days=days)


@tool
def cost_breakdown(by: Dimension, days: Days = 30, team: str | None = None) -> dict[str, Any]:
    """Cost split by team, model or day, biggest first (days in date order).

    Args:
        by: The dimension to split by.
        days: The window, counted back from the last day in the data.
        team: Only this team; every team when omitted.
    """
    data = spend_data.load_usage()
    return spend_data.cost_breakdown(data, by=by, days=days, team=team)


@tool
def savings_from_cheaper_models(
    days: Days = 30, share: Fraction = 0.4, team: str | None = None
) -> dict[str, Any]:
    """Savings from moving a share of premium-model traffic to the same provider's cheaper model.

    Args:
        days: The window, counted back from the last day in the data.
        share: The fraction of each premium model's traffic to move (0-1).
        team: Only this team; every team when omitted.
    """
    data = spend_data.load_usage()
    return spend_data.savings_from_cheaper_models(data, days=days, share=share, team=team)


@tool
def savings_from_caching(
    days: Days = 30, target_hit_rate: Fraction = 0.5, team: str | None = None
) -> dict[str, Any]:
    """Savings from serving more input tokens from the provider's prompt cache.

    Args:
        days: The window, counted back from the last day in the data.
        target_hit_rate: The share of input tokens that should hit the cache (0-1).
        team: Only this team; every team when omitted.
    """
    data = spend_data.load_usage()
    return spend_data.savings_from_caching(
        data, days=days, target_hit_rate=target_hit_rate, team=team
    )


@tool
def draft_report(title: str, findings: list[str]) -> str:
    """Write a short Markdown report from findings, with the data's provenance.

    Args:
        title: The report's heading.
        findings: One sentence or paragraph per finding, in order of importance.
    """
    data = spend_data.load_usage()
    lines = [f"## {title}", ""]
    lines += [f"- {finding.strip()}" for finding in findings if finding.strip()]
    if not findings:
        lines.append("- No findings were given.")
    lines += [
        "",
        f"_Source: sample usage data {data.first_date.isoformat()} to "
        f"{data.last_date.isoformat()}, list prices per million tokens._",
    ]
    return "\n".join(lines)


SPEND_TOOLS: tuple[ToolSpec[..., Any], ...] = (
    usage_metrics,
    cost_breakdown,
    savings_from_cheaper_models,
    savings_from_caching,
    draft_report,
)

"""The demo's sample dataset of LLM usage, and the arithmetic the demo's tools do on it.

``data/usage.csv`` is synthetic: 90 days of daily usage for six teams on six
models, made by ``data/generate.py`` (seeded, so it is reproducible). Prices
are sample list prices in USD per million tokens; they are the one source both
for the generator's ``cost_usd`` column and for the "what if" estimates here.

Everything is pure and deterministic: the same question gives the same
numbers. Windows count back from the **last date in the data**, not from
today, so the demo answers the same tomorrow. Sums use ``math.fsum`` so that
they do not depend on the order of rows.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

__all__ = [
    "CHEAPER_ALTERNATIVE",
    "PRICES",
    "ModelPrice",
    "UsageData",
    "UsageRow",
    "cost_breakdown",
    "load_usage",
    "parse_usage_csv",
    "price_tokens",
    "savings_from_caching",
    "savings_from_cheaper_models",
    "usage_metrics",
]

CSV_COLUMNS: Final = (
    "date",
    "team",
    "model",
    "provider",
    "requests",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens; cached input tokens are billed at ``cached_per_mtok``."""

    provider: str
    input_per_mtok: float
    output_per_mtok: float
    cached_per_mtok: float


PRICES: Final[Mapping[str, ModelPrice]] = MappingProxyType(
    {
        "gpt-4o": ModelPrice("openai", 2.50, 10.00, 1.25),
        "gpt-4o-mini": ModelPrice("openai", 0.15, 0.60, 0.075),
        "claude-3-5-sonnet": ModelPrice("anthropic", 3.00, 15.00, 0.30),
        "claude-3-5-haiku": ModelPrice("anthropic", 0.80, 4.00, 0.08),
        "gemini-1.5-pro": ModelPrice("google", 1.25, 5.00, 0.3125),
        "gemini-1.5-flash": ModelPrice("google", 0.075, 0.30, 0.01875),
    }
)

#: The same provider's cheaper model, the usual first step to save money.
CHEAPER_ALTERNATIVE: Final[Mapping[str, str]] = MappingProxyType(
    {
        "gpt-4o": "gpt-4o-mini",
        "claude-3-5-sonnet": "claude-3-5-haiku",
        "gemini-1.5-pro": "gemini-1.5-flash",
    }
)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One day of one team's usage of one model."""

    date: date
    team: str
    model: str
    provider: str
    requests: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float


def price_tokens(row: UsageRow, model: str) -> float:
    """What ``row``'s tokens would cost on ``model`` (same cache share)."""
    price = PRICES[model]
    uncached = row.input_tokens - row.cached_tokens
    return (
        uncached * price.input_per_mtok
        + row.cached_tokens * price.cached_per_mtok
        + row.output_tokens * price.output_per_mtok
    ) / 1e6


class UsageData:
    """The whole dataset (immutable) and windowed selections of it."""

    def __init__(self, rows: Iterable[UsageRow]) -> None:
        self.rows: tuple[UsageRow, ...] = tuple(rows)
        if not self.rows:
            raise ValueError("the usage dataset is empty")
        self.first_date: date = min(row.date for row in self.rows)
        self.last_date: date = max(row.date for row in self.rows)
        self.teams: tuple[str, ...] = tuple(sorted({row.team for row in self.rows}))
        self.models: tuple[str, ...] = tuple(sorted({row.model for row in self.rows}))

    @property
    def span_days(self) -> int:
        """How many days the data covers."""
        return (self.last_date - self.first_date).days + 1

    def period(self, days: int, *, offset: int = 0) -> tuple[date, date]:
        """First and last date of the ``days``-day window ending ``offset`` days before the end."""
        end = self.last_date - timedelta(days=offset)
        return end - timedelta(days=days - 1), end

    def window(self, days: int, *, team: str | None = None, offset: int = 0) -> list[UsageRow]:
        """Rows of the window (see :meth:`period`), optionally of one team.

        Raises:
            ValueError: ``days`` out of range or an unknown team (the message
                lists the valid values, for the model reading it).
        """
        if not 1 <= days <= self.span_days:
            raise ValueError(f"days must be between 1 and {self.span_days}")
        if team is not None and team not in self.teams:
            raise ValueError(f"unknown team {team!r}; teams are: {', '.join(self.teams)}")
        start, end = self.period(days, offset=offset)
        return [
            row
            for row in self.rows
            if start <= row.date <= end and (team is None or row.team == team)
        ]


def parse_usage_csv(text: str) -> UsageData:
    """Parse the CSV text of ``data/usage.csv``."""
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
        raise ValueError(f"unexpected columns {reader.fieldnames}; expected {CSV_COLUMNS}")
    return UsageData(
        UsageRow(
            date=date.fromisoformat(rec["date"]),
            team=rec["team"],
            model=rec["model"],
            provider=rec["provider"],
            requests=int(rec["requests"]),
            input_tokens=int(rec["input_tokens"]),
            output_tokens=int(rec["output_tokens"]),
            cached_tokens=int(rec["cached_tokens"]),
            cost_usd=float(rec["cost_usd"]),
        )
        for rec in reader
    )


def load_usage(path: str | Path | None = None) -> UsageData:
    """The dataset: the bundled ``data/usage.csv`` (read once), or another file."""
    if path is None:
        return _bundled()
    return parse_usage_csv(Path(path).read_text(encoding="utf-8"))


@functools.cache
def _bundled() -> UsageData:
    # Cached: the bundled file never changes while the process runs, and
    # UsageData is immutable, so sharing one instance is safe.
    text = resources.files(__package__ or "").joinpath("data", "usage.csv").read_text("utf-8")
    return parse_usage_csv(text)


# --- the numbers the tools report -----------------------------------------------


def _money(value: float) -> float:
    return round(value, 2)


def _sum(rows: Iterable[UsageRow], value: Callable[[UsageRow], float]) -> float:
    return math.fsum(value(row) for row in rows)


def _group(rows: Iterable[UsageRow], key: Callable[[UsageRow], str]) -> dict[str, list[UsageRow]]:
    groups: dict[str, list[UsageRow]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


def _period_info(data: UsageData, days: int) -> dict[str, Any]:
    start, end = data.period(days)
    return {"days": days, "start": start.isoformat(), "end": end.isoformat()}


def usage_metrics(data: UsageData, *, team: str | None = None, days: int = 30) -> dict[str, Any]:
    """Totals of the window, the change on the window before it, and the cache hit rate."""
    rows = data.window(days, team=team)
    cost = _sum(rows, lambda r: r.cost_usd)
    requests = sum(row.requests for row in rows)
    input_tokens = sum(row.input_tokens for row in rows)
    cached = sum(row.cached_tokens for row in rows)
    previous: float | None = None
    if 2 * days <= data.span_days:
        previous = _sum(data.window(days, team=team, offset=days), lambda r: r.cost_usd)
    return {
        "period": _period_info(data, days),
        "team": team,
        "cost_usd": _money(cost),
        "requests": requests,
        "input_tokens": input_tokens,
        "output_tokens": sum(row.output_tokens for row in rows),
        "cached_tokens": cached,
        "cache_hit_rate": round(cached / input_tokens, 4) if input_tokens else 0.0,
        "cost_per_request_usd": round(cost / requests, 6) if requests else 0.0,
        "previous_cost_usd": None if previous is None else _money(previous),
        "change_pct": (None if not previous else round((cost - previous) / previous * 100, 1)),
    }


Dimension = Literal["team", "model", "day"]


def cost_breakdown(
    data: UsageData, *, by: Dimension, days: int = 30, team: str | None = None
) -> dict[str, Any]:
    """Cost per team, model or day of the window; teams and models biggest first."""
    rows = data.window(days, team=team)
    keys: Mapping[str, Callable[[UsageRow], str]] = {
        "team": lambda r: r.team,
        "model": lambda r: r.model,
        "day": lambda r: r.date.isoformat(),
    }
    total = _sum(rows, lambda r: r.cost_usd)
    items: list[dict[str, Any]] = [
        {
            "key": key,
            "cost_usd": _money(cost := _sum(group, lambda r: r.cost_usd)),
            "share": round(cost / total, 4) if total else 0.0,
            "requests": sum(row.requests for row in group),
        }
        for key, group in _group(rows, keys[by]).items()
    ]
    if by == "day":
        items.sort(key=lambda item: str(item["key"]))
    else:
        items.sort(key=lambda item: (-float(item["cost_usd"]), str(item["key"])))
    return {
        "by": by,
        "team": team,
        "period": _period_info(data, days),
        "total_cost_usd": _money(total),
        "items": items,
    }


def savings_from_cheaper_models(
    data: UsageData, *, days: int = 30, share: float = 0.4, team: str | None = None
) -> dict[str, Any]:
    """What moving ``share`` of each premium model's traffic to its cheaper sibling saves.

    Per team and premium model: ``share * (actual cost - the same tokens
    priced on the cheaper model)``. Biggest savings first.
    """
    if not 0 <= share <= 1:
        raise ValueError("share must be between 0 and 1")
    rows = data.window(days, team=team)
    opportunities: list[dict[str, Any]] = []
    for (group_team, model), group in _group_pairs(rows).items():
        alternative = CHEAPER_ALTERNATIVE.get(model)
        if alternative is None:
            continue
        current = _sum(group, lambda r: r.cost_usd)
        projected = math.fsum(price_tokens(row, alternative) for row in group)
        opportunities.append(
            {
                "team": group_team,
                "model": model,
                "alternative": alternative,
                "current_cost_usd": _money(current),
                "savings_usd": _money(share * (current - projected)),
            }
        )
    opportunities.sort(key=lambda o: (-float(o["savings_usd"]), o["team"], o["model"]))
    total = math.fsum(float(o["savings_usd"]) for o in opportunities)
    spend = _sum(rows, lambda r: r.cost_usd)
    return {
        "period": _period_info(data, days),
        "team": team,
        "share": share,
        "total_cost_usd": _money(spend),
        "total_savings_usd": _money(total),
        "savings_pct": round(total / spend * 100, 1) if spend else 0.0,
        "opportunities": opportunities,
    }


def savings_from_caching(
    data: UsageData, *, days: int = 30, target_hit_rate: float = 0.5, team: str | None = None
) -> dict[str, Any]:
    """What raising the prompt-cache hit rate to ``target_hit_rate`` would save.

    Per team and model below the target: the extra cached input tokens,
    ``(target - current rate) * input tokens``, cost the cached price instead
    of the full input price. Biggest savings first.
    """
    if not 0 <= target_hit_rate <= 1:
        raise ValueError("target_hit_rate must be between 0 and 1")
    rows = data.window(days, team=team)
    opportunities: list[dict[str, Any]] = []
    for (group_team, model), group in _group_pairs(rows).items():
        input_tokens = sum(row.input_tokens for row in group)
        cached = sum(row.cached_tokens for row in group)
        rate = cached / input_tokens if input_tokens else 0.0
        if rate >= target_hit_rate:
            continue
        price = PRICES[model]
        extra = (target_hit_rate - rate) * input_tokens
        saving = extra * (price.input_per_mtok - price.cached_per_mtok) / 1e6
        opportunities.append(
            {
                "team": group_team,
                "model": model,
                "cache_hit_rate": round(rate, 4),
                "savings_usd": _money(saving),
            }
        )
    opportunities.sort(key=lambda o: (-float(o["savings_usd"]), o["team"], o["model"]))
    return {
        "period": _period_info(data, days),
        "team": team,
        "target_hit_rate": target_hit_rate,
        "total_savings_usd": _money(math.fsum(float(o["savings_usd"]) for o in opportunities)),
        "opportunities": opportunities,
    }


def _group_pairs(rows: Sequence[UsageRow]) -> dict[tuple[str, str], list[UsageRow]]:
    groups: dict[tuple[str, str], list[UsageRow]] = {}
    for row in rows:
        groups.setdefault((row.team, row.model), []).append(row)
    return groups

"""Generate ``usage.csv``, the demo's synthetic LLM-usage dataset (deterministic).

Run ``python -m agentcast.agents.builtin.data.generate`` to rewrite the file,
or with ``--check`` to verify that the committed file is what this script
makes. The output depends only on :data:`SEED` and the tables below, so the
demo's numbers are reproducible and a test can regenerate and compare.

The shape is meant to give the demo something to find: spend grows over the
quarter, weekends are quiet, premium models carry much of the cost, cache hit
rates differ by team and provider, and one team runs a batch job for a week.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import sys
from datetime import date, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Final

from ..spend_data import CSV_COLUMNS, PRICES

__all__ = ["DAYS", "SEED", "START", "main", "render_csv"]

SEED: Final = 20250101
START: Final = date(2025, 1, 1)
DAYS: Final = 90

MODELS: Final = tuple(PRICES)

#: Base daily requests per team, in the order of :data:`MODELS`.
REQUESTS: Final = MappingProxyType(
    {
        "search": (6000, 9000, 1500, 2000, 800, 4000),
        "support": (3000, 5000, 4500, 1500, 200, 1000),
        "growth": (2500, 3000, 800, 600, 1200, 2500),
        "platform": (1200, 6000, 2000, 3000, 500, 1500),
        "analytics": (1500, 800, 2500, 400, 1800, 700),
        "mobile": (800, 7000, 300, 2500, 300, 5000),
    }
)

#: Per team: mean input tokens, mean output tokens, base prompt-cache hit rate.
PROFILE: Final = MappingProxyType(
    {
        "search": (3000, 350, 0.35),
        "support": (2200, 450, 0.15),
        "growth": (1200, 600, 0.05),
        "platform": (1800, 300, 0.45),
        "analytics": (4500, 800, 0.20),
        "mobile": (800, 200, 0.10),
    }
)

#: How readily each provider's cache is used (explicit cache control costs effort).
CACHE_FACTOR: Final = MappingProxyType({"openai": 1.0, "anthropic": 0.6, "google": 0.4})

#: analytics' week-long batch job on the pro model (day offsets, multiplier).
BATCH: Final = (range(40, 47), "analytics", "gemini-1.5-pro", 4.0)


def _rows(rng: random.Random) -> list[list[str]]:
    rows: list[list[str]] = []
    batch_days, batch_team, batch_model, batch_factor = BATCH
    for offset in range(DAYS):
        day = START + timedelta(days=offset)
        weekday_factor = 0.55 if day.weekday() >= 5 else 1.0
        trend = 1 + 0.35 * offset / (DAYS - 1)
        for team, base_requests in REQUESTS.items():
            in_mean, out_mean, cache_base = PROFILE[team]
            for model, base in zip(MODELS, base_requests, strict=True):
                price = PRICES[model]
                factor = weekday_factor * trend * rng.uniform(0.85, 1.15)
                if offset in batch_days and (team, model) == (batch_team, batch_model):
                    factor *= batch_factor
                requests = round(base * factor)
                if requests <= 0:
                    continue
                input_tokens = round(requests * in_mean * rng.uniform(0.9, 1.1))
                output_tokens = round(requests * out_mean * rng.uniform(0.9, 1.1))
                hit = cache_base * CACHE_FACTOR[price.provider] * rng.uniform(0.8, 1.2)
                cached = round(input_tokens * min(hit, 0.9))
                cost = (
                    (input_tokens - cached) * price.input_per_mtok
                    + cached * price.cached_per_mtok
                    + output_tokens * price.output_per_mtok
                ) / 1e6
                rows.append(
                    [
                        day.isoformat(),
                        team,
                        model,
                        price.provider,
                        str(requests),
                        str(input_tokens),
                        str(output_tokens),
                        str(cached),
                        f"{cost:.4f}",
                    ]
                )
    return rows


def render_csv(seed: int = SEED) -> str:
    """The full CSV text for ``seed``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(_rows(random.Random(seed)))
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Write (or ``--check``) ``usage.csv`` next to this file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args(argv)
    target = Path(__file__).with_name("usage.csv")
    text = render_csv()
    if args.check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            print(f"{target.name} is out of date; run without --check", file=sys.stderr)
            return 1
        return 0
    target.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``demo``: an AI-spend analyst that shows every kind of event a real agent produces.

The supervisor ``demo`` reads the question, thinks out loud, delegates to
sub-agents — ``spend_analyst`` (where the money goes), ``savings_advisor``
(what cheaper models and prompt caching would save) and ``report_writer`` (the
write-up) — which call real tools over the bundled dataset, then streams the
answer. By default no model is involved: routing is keyword-based and the
prose is templated, so the same question always gives the same numbers, which
the tests check against their own computation from the CSV. With a ``writer``
(``agentcast serve --llm local|openai``) the routing and the tools stay in code
— a small model cannot choose tools reliably — and the model writes the
answer from the report, token by token.

Short pauses between steps make it look live in a browser; with the default
pace a run takes about 1.5 s, and ``pace=0`` makes it instant for tests.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from . import spend_data
from .spend_tools import (
    SPEND_TOOLS,
    cost_breakdown,
    draft_report,
    savings_from_caching,
    savings_from_cheaper_models,
    usage_metrics,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ..context import RunContext
    from ..registry import AgentRegistry


class Writer(Protocol):
    """Writes one answer to chat messages into a run (``agentcast.llm.ChatAgent.write``)."""

    async def write(self, ctx: RunContext, messages: Sequence[Mapping[str, Any]]) -> str: ...


#: What the writer is told; the numbers come only from the report it is given.
WRITER_PROMPT: Final = (
    "You are an AI-spend analyst. Answer the user's question in a few short sentences "
    "using only the facts in the report below; keep every number exactly as written."
)

__all__ = [
    "CACHE_TARGET",
    "DEFAULT_SHARE",
    "WRITER_PROMPT",
    "Question",
    "SpendDemo",
    "Writer",
    "parse_question",
    "register",
]

DEFAULT_DAYS: Final = 30
DEFAULT_SHARE: Final = 0.4
CACHE_TARGET: Final = 0.5
STEP_PAUSE_S: Final = 0.08
CHUNK_PAUSE_S: Final = 0.015
WORDS_PER_CHUNK: Final = 5

_MODEL_WORDS: Final = (
    "model",
    "cheaper",
    "switch",
    "downgrade",
    "migrat",
    "gpt",
    "claude",
    "gemini",
)
_CACHE_WORDS: Final = ("cach",)
_SAVE_WORDS: Final = ("save", "saving", "reduce", "cut", "optimi", "lower", "waste", "cheaper")
_SPEND_WORDS: Final = ("cost", "spend", "spent", "bill", "budget", "how much", "team", "usage")


@dataclass(frozen=True, slots=True)
class Question:
    """What the demo understood from a question."""

    days: int = DEFAULT_DAYS
    team: str | None = None
    share: float = DEFAULT_SHARE
    models: bool = True
    caching: bool = True

    @property
    def scope(self) -> str:
        """``team X`` or ``all teams``."""
        return f"team {self.team}" if self.team else "all teams"

    @property
    def wants_savings(self) -> bool:
        """Whether the savings advisor has anything to do."""
        return self.models or self.caching


def parse_question(text: str, teams: tuple[str, ...], max_days: int) -> Question:
    """Keyword triage: window, team, share of traffic to move, and topics.

    A question about spend only gets the spend analysis; one that mentions
    saving, models or caching gets the savings advice too; one that matches
    nothing gets everything.
    """
    lower = text.lower()
    days = DEFAULT_DAYS
    if match := re.search(r"\b(\d{1,3})\s*-?\s*days?\b", lower):
        days = int(match[1])
    elif match := re.search(r"\b(\d{1,2})\s*weeks?\b", lower):
        days = 7 * int(match[1])
    elif match := re.search(r"\b(\d)\s*months?\b", lower):
        days = 30 * int(match[1])
    elif re.search(r"\bweek\b", lower):
        days = 7
    elif re.search(r"\bquarter\b", lower):
        days = 90
    days = max(1, min(days, max_days))
    team = next((t for t in teams if re.search(rf"\b{re.escape(t)}\b", lower)), None)
    share = DEFAULT_SHARE
    if match := re.search(r"(\d{1,3}(?:\.\d+)?)\s*%", lower):
        share = max(0.0, min(float(match[1]) / 100, 1.0))
    models = any(word in lower for word in _MODEL_WORDS)
    caching = any(word in lower for word in _CACHE_WORDS)
    saving = any(word in lower for word in _SAVE_WORDS)
    spend = any(word in lower for word in _SPEND_WORDS)
    if saving and not (models or caching):
        models = caching = True
    elif not (models or caching or spend):
        models = caching = True  # nothing recognised: the full analysis
    return Question(days=days, team=team, share=share, models=models, caching=caching)


def money(value: float) -> str:
    """``$12,345.67``."""
    return f"${value:,.2f}"


def _top(items: list[dict[str, Any]], count: int = 3) -> str:
    return ", ".join(
        f"{item['key']} {money(item['cost_usd'])} ({item['share'] * 100:.1f}%)"
        for item in items[:count]
    )


class SpendDemo:
    """The demo's agents, sharing one pace.

    Args:
        pace: Multiplies every pause (0 = no pauses).
    """

    def __init__(self, pace: float = 1.0, writer: Writer | None = None) -> None:
        self.pace = pace
        self.writer = writer

    # Agents

    async def demo(self, ctx: RunContext) -> str:
        """AI-spend analyst over sample LLM usage data: where the money goes, how to save.

        Ask e.g. "How much did we spend last month and how can we save?"
        """
        data = spend_data.load_usage()
        question = parse_question(ctx.message, data.teams, data.span_days)
        topics = ["spend"]
        topics += ["cheaper models"] if question.models else []
        topics += ["prompt caching"] if question.caching else []
        await ctx.think(
            f"Reading the question: {question.scope}, last {question.days} days; "
            f"looking at {', '.join(topics)}.",
            progress=0.05,
        )
        await self._pause()
        helpers = ["spend_analyst for the numbers"]
        if question.wants_savings:
            helpers.append("savings_advisor for savings estimates")
        helpers.append("report_writer to write it up")
        await ctx.think(f"Plan: ask {'; '.join(helpers)}.", progress=0.15)
        await self._pause()

        findings = []
        spend = await ctx.delegate(
            "spend_analyst",
            f"Analyse spend for {question.scope} over the last {question.days} days.",
        )
        findings += spend.splitlines()
        await ctx.think("The spend picture is in.", progress=0.45)
        await self._pause()
        if question.wants_savings:
            ways = []
            if question.models:
                ways.append(
                    f"moving {question.share * 100:g}% of premium-model traffic to cheaper models"
                )
            if question.caching:
                ways.append("prompt caching")
            savings = await ctx.delegate(
                "savings_advisor",
                f"Find savings for {question.scope} over the last {question.days} days: "
                f"{' and '.join(ways)}.",
            )
            findings += savings.splitlines()
            await ctx.think("The savings estimates are in.", progress=0.7)
            await self._pause()

        title = f"AI spend, last {question.days} days ({question.scope})"
        bullets = "\n".join(f"- {finding}" for finding in findings if finding.strip())
        report = await ctx.delegate(
            "report_writer", f'Write a report titled "{title}" with these findings:\n{bullets}'
        )
        if self.writer is not None:
            await ctx.think("Report drafted; the model writes the answer.", progress=0.9)
            # The thread's earlier turns sit between the prompt and the new question,
            # so a follow-up ("and last week?") can refer to what was said before.
            return await self.writer.write(
                ctx,
                [
                    {"role": "system", "content": WRITER_PROMPT},
                    *ctx.history,
                    {"role": "user", "content": f"Question: {ctx.message}\n\nReport:\n{report}"},
                ],
            )
        await ctx.think("Report drafted; sending the answer.", progress=0.9)
        await self._stream(ctx, report)
        return report

    async def spend_analyst(self, ctx: RunContext) -> str:
        """Breaks AI spend down by team and model, with the trend and cache hit rate."""
        data = spend_data.load_usage()
        question = parse_question(ctx.message, data.teams, data.span_days)
        team, days = question.team, question.days
        await ctx.think(f"Pulling usage for {question.scope}, last {days} days.", progress=0.1)
        await self._pause()
        metrics = await ctx.call_tool(usage_metrics, team=team, days=days)
        by_model = await ctx.call_tool(cost_breakdown, by="model", days=days, team=team)
        by_team = None
        if team is None:
            by_team = await ctx.call_tool(cost_breakdown, by="team", days=days)
        await ctx.think("Summarising where the money goes.", progress=0.8)
        await self._pause()

        period = metrics["period"]
        headline = (
            f"Total spend over the last {days} days ({period['start']} to {period['end']}, "
            f"{question.scope}): {money(metrics['cost_usd'])} across "
            f"{metrics['requests']:,} requests"
        )
        change = metrics["change_pct"]
        if change is not None:
            direction = "up" if change >= 0 else "down"
            headline += f", {direction} {abs(change):.1f}% on the previous {days} days"
        lines = [headline + "."]
        if by_team is not None:
            lines.append(f"Biggest teams: {_top(by_team['items'])}.")
        lines.append(f"Biggest models: {_top(by_model['items'])}.")
        lines.append(
            f"The prompt cache served {metrics['cache_hit_rate'] * 100:.1f}% of input tokens."
        )
        return "\n".join(lines)

    async def savings_advisor(self, ctx: RunContext) -> str:
        """Estimates savings from cheaper models and from prompt caching."""
        data = spend_data.load_usage()
        question = parse_question(ctx.message, data.teams, data.span_days)
        team, days, share = question.team, question.days, question.share
        lines = []
        if question.models:
            await ctx.think("Looking for traffic that could move to cheaper models.", progress=0.1)
            await self._pause()
            result = await ctx.call_tool(
                savings_from_cheaper_models, days=days, share=share, team=team
            )
            lines.append(_model_savings_text(result, days))
        if question.caching:
            await ctx.think(
                "Checking how much input is served from the prompt cache.", progress=0.5
            )
            await self._pause()
            result = await ctx.call_tool(
                savings_from_caching, days=days, target_hit_rate=CACHE_TARGET, team=team
            )
            lines.append(_caching_savings_text(result))
        return "\n".join(lines)

    async def report_writer(self, ctx: RunContext) -> str:
        """Turns findings into a short Markdown report."""
        title_match = re.search(r'"([^"\n]+)"', ctx.message)
        title = title_match[1] if title_match else "AI spend report"
        findings = [line[2:].strip() for line in ctx.message.splitlines() if line.startswith("- ")]
        await ctx.think(f"Writing up {len(findings)} findings.", progress=0.3)
        await self._pause()
        report: str = await ctx.call_tool(draft_report, title=title, findings=findings)
        return report

    # Private methods

    async def _pause(self, seconds: float = STEP_PAUSE_S) -> None:
        await asyncio.sleep(seconds * self.pace)

    async def _stream(self, ctx: RunContext, text: str) -> None:
        """Say ``text`` a few words at a time, like a model streaming tokens."""
        words = re.findall(r"\S+\s*|\s+", text)
        for start in range(0, len(words), WORDS_PER_CHUNK):
            await ctx.say("".join(words[start : start + WORDS_PER_CHUNK]))
            await self._pause(CHUNK_PAUSE_S)


def _model_savings_text(result: dict[str, Any], days: int) -> str:
    opportunities = result["opportunities"]
    share = f"{result['share'] * 100:g}%"
    if not opportunities:
        return "There is no premium-model traffic to move to a cheaper model."
    first, *rest = opportunities
    text = (
        f"Moving {share} of the {first['model']} traffic of team {first['team']} to "
        f"{first['alternative']} would save {money(first['savings_usd'])} over the last "
        f"{days} days"
    )
    if rest:
        text += "; next: " + ", ".join(
            f"{o['team']} {o['model']} to {o['alternative']} {money(o['savings_usd'])}"
            for o in rest[:2]
        )
    return (
        f"{text}. Moving {share} of all premium-model traffic would save "
        f"{money(result['total_savings_usd'])} ({result['savings_pct']:.1f}% of spend)."
    )


def _caching_savings_text(result: dict[str, Any]) -> str:
    target = f"{result['target_hit_rate'] * 100:g}%"
    opportunities = result["opportunities"]
    if not opportunities:
        return f"Every team and model already serves {target} of input from the prompt cache."
    first = opportunities[0]
    return (
        f"Raising the prompt-cache hit rate to {target} would save "
        f"{money(result['total_savings_usd'])}; the biggest gap is {first['team']} on "
        f"{first['model']} ({first['cache_hit_rate'] * 100:.1f}% cached, "
        f"{money(first['savings_usd'])})."
    )


def register(
    registry: AgentRegistry, *, pace: float = 1.0, writer: Writer | None = None
) -> SpendDemo:
    """Add ``demo``, its sub-agents and their tools; ``writer`` writes the demo's answers."""
    agents = SpendDemo(pace, writer)
    registry.register(agents.demo, name="demo")  # its sub-agents hold the tools
    registry.register(agents.spend_analyst, name="spend_analyst", tools=SPEND_TOOLS[:2])
    registry.register(agents.savings_advisor, name="savings_advisor", tools=SPEND_TOOLS[2:4])
    registry.register(agents.report_writer, name="report_writer", tools=SPEND_TOOLS[4:])
    return agents

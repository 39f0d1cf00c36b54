"""The built-in agents do exactly what docs/protocol.md ("Built-in agents") promises.

``echo`` and ``countdown`` are relied on by clients, tests and benchmarks, so
their event sequences are asserted exactly. ``demo``'s numbers are checked
against a computation from the CSV written here, independently of the code
under test.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from importlib import resources

import pytest

from agentcast.agents import AgentSettings, ToolError, builtin_registry
from agentcast.agents.builtin import spend_data
from agentcast.agents.builtin.countdown import parse_countdown
from agentcast.agents.builtin.data import generate
from tests.utils import MS, SCALE

from .harness import Harness, assert_tools_paired

SUB_AGENTS = ("spend_analyst", "savings_advisor", "report_writer")


def make(pace: float = 0.0, **settings: float) -> Harness:
    return Harness(builtin_registry(demo_pace=pace), AgentSettings(**settings))


def test_builtin_registry_is_new_every_time() -> None:
    one, two = builtin_registry(), builtin_registry()
    assert one is not two
    assert list(one) == ["demo", *SUB_AGENTS, "echo", "countdown"]
    one.register(lambda_agent, name="extra")
    assert "extra" not in two
    listing = {a["name"]: a for a in two.describe()}
    assert [t["name"] for t in listing["spend_analyst"]["tools"]] == [
        "usage_metrics",
        "cost_breakdown",
    ]
    assert [t["name"] for t in listing["savings_advisor"]["tools"]] == [
        "savings_from_cheaper_models",
        "savings_from_caching",
    ]
    assert listing["demo"]["description"].startswith("AI-spend analyst")
    assert listing["countdown"]["tools"] == []


async def lambda_agent(ctx: object) -> str:
    return ""


# --- echo -------------------------------------------------------------------------


async def test_echo_emits_exactly_started_one_thinking_completed() -> None:
    h = make()
    assert await h.run("echo", "hello there") == ("hello there", None)
    assert h.types() == ["agent_started", "agent_thinking", "agent_completed"]
    assert h.events[0].data == {"message": "hello there"}
    assert h.events[1].data == {"reasoning": "Echoing 11 characters.", "step": 1, "progress": 1.0}
    assert h.events[2].data["final_response"] == "hello there"


# --- countdown --------------------------------------------------------------------


async def test_countdown_emits_exactly_n_steps() -> None:
    h = make()
    assert await h.run("countdown", "4 1") == ("Liftoff after 4 steps", None)
    assert h.types() == ["agent_started", *["agent_thinking"] * 4, "agent_completed"]
    assert [e.data for e in h.events[1:-1]] == [
        {"reasoning": "4", "step": 1, "progress": 0.25},
        {"reasoning": "3", "step": 2, "progress": 0.5},
        {"reasoning": "2", "step": 3, "progress": 0.75},
        {"reasoning": "1", "step": 4, "progress": 1.0},
    ]


async def test_countdown_zero_and_default_delay() -> None:
    h = make()
    assert await h.run("countdown", "0") == ("Liftoff after 0 steps", None)
    assert h.types() == ["agent_started", "agent_completed"]
    assert parse_countdown(" 3 ") == (3, 100.0)
    assert parse_countdown("3 12.5") == (3, 12.5)


async def test_countdown_keeps_absolute_deadlines_even_with_slow_emits() -> None:
    steps, delay_ms = 10, round(25 * SCALE)  # emits (15 ms, scaled) must fit in a step
    h = make()
    h.emit_delay = 15 * MS  # a drifting loop would end up 10 x 15 ms late
    await h.run("countdown", f"{steps} {delay_ms}")
    thinking = h.of_type("agent_thinking")
    start = h.events[0].at + h.emit_delay  # the agent starts once agent_started is emitted
    lateness = [e.at - (start + i * delay_ms / 1000) for i, e in enumerate(thinking, 1)]
    assert min(lateness) > -2 * MS  # never early (beyond the loop's clock resolution)
    # No drift: a loop sleeping DELAY_MS after each emit would be i x 15 ms late at
    # step i, a slope of 15 ms per step. A busy machine may add jitter or a constant
    # delay, but lateness must not grow with the step number.
    slope = statistics.linear_regression(range(steps), lateness).slope
    assert slope < 4 * MS
    assert max(lateness) < 40 * MS
    total = thinking[-1].at - start
    assert steps * delay_ms / 1000 <= total + 2 * MS < steps * delay_ms / 1000 + 40 * MS


@pytest.mark.parametrize("message", ["", "abc", "5 x", "-1", "1 2 3", "5 -3", "100001"])
async def test_countdown_rejects_bad_input(message: str) -> None:
    with pytest.raises(ValueError, match='countdown: expected "N" or "N DELAY_MS"'):
        parse_countdown(message)
    h = make()
    final, error = await h.run("countdown", message)
    assert final is None
    assert error is not None
    assert error.startswith('countdown: expected "N" or "N DELAY_MS"')
    assert h.types() == ["agent_started", "agent_error"]
    assert h.events[-1].data["error_type"] == "ValueError"


# --- the dataset ------------------------------------------------------------------


def bundled_csv() -> str:
    files = resources.files("agentcast.agents.builtin.data")
    return files.joinpath("usage.csv").read_text("utf-8")


def test_bundled_csv_is_what_the_seeded_generator_makes() -> None:
    text = bundled_csv()
    assert generate.render_csv() == text
    assert generate.main(["--check"]) == 0
    assert len(text.encode()) < 1_500_000
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len({r["date"] for r in rows}) == 90
    assert len({r["team"] for r in rows}) == 6
    assert len({r["model"] for r in rows}) == 6
    assert len(rows) == 90 * 6 * 6


#: List prices per million tokens, written out again here on purpose: the
#: test's arithmetic must not share code with the implementation.
PRICES = {
    "gpt-4o": (2.50, 10.00, 1.25),
    "gpt-4o-mini": (0.15, 0.60, 0.075),
    "claude-3-5-sonnet": (3.00, 15.00, 0.30),
    "claude-3-5-haiku": (0.80, 4.00, 0.08),
    "gemini-1.5-pro": (1.25, 5.00, 0.3125),
    "gemini-1.5-flash": (0.075, 0.30, 0.01875),
}
CHEAPER = {
    "gpt-4o": "gpt-4o-mini",
    "claude-3-5-sonnet": "claude-3-5-haiku",
    "gemini-1.5-pro": "gemini-1.5-flash",
}


@dataclass
class Expected:
    total: float
    start: date
    end: date
    top_move: tuple[str, str, str, float]  # team, model, alternative, savings
    move_total: float
    cache_total: float
    top_cache: tuple[str, str, float]


def expected(days: int, team: str | None = None, share: float = 0.4) -> Expected:
    rows = list(csv.DictReader(io.StringIO(bundled_csv())))
    end = max(date.fromisoformat(r["date"]) for r in rows)
    start = end - timedelta(days=days - 1)
    rows = [
        r
        for r in rows
        if start <= date.fromisoformat(r["date"]) <= end and team in (None, r["team"])
    ]
    groups: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        groups[r["team"], r["model"]].append(r)

    moves = []
    caching = []
    for (g_team, model), group in groups.items():
        cost = math.fsum(float(r["cost_usd"]) for r in group)
        inp = sum(int(r["input_tokens"]) for r in group)
        cached = sum(int(r["cached_tokens"]) for r in group)
        if model in CHEAPER:
            alt_in, alt_out, alt_cached = PRICES[CHEAPER[model]]
            alt = math.fsum(
                (
                    (int(r["input_tokens"]) - int(r["cached_tokens"])) * alt_in
                    + int(r["cached_tokens"]) * alt_cached
                    + int(r["output_tokens"]) * alt_out
                )
                / 1e6
                for r in group
            )
            moves.append((round(share * (cost - alt), 2), g_team, model, CHEAPER[model]))
        if cached / inp < 0.5:
            full, _, cached_price = PRICES[model]
            saving = (0.5 - cached / inp) * inp * (full - cached_price) / 1e6
            caching.append((round(saving, 2), g_team, model))
    moves.sort(key=lambda m: (-m[0], m[1], m[2]))
    caching.sort(key=lambda c: (-c[0], c[1], c[2]))
    return Expected(
        total=round(math.fsum(float(r["cost_usd"]) for r in rows), 2),
        start=start,
        end=end,
        top_move=(moves[0][1], moves[0][2], moves[0][3], moves[0][0]),
        move_total=round(math.fsum(m[0] for m in moves), 2),
        cache_total=round(math.fsum(c[0] for c in caching), 2),
        top_cache=(caching[0][1], caching[0][2], caching[0][0]),
    )


# --- demo -------------------------------------------------------------------------

QUESTION = "How much did we spend last month, and how can we save money?"


async def test_demo_answers_with_numbers_computed_from_the_data() -> None:
    h = make()
    final, error = await h.run("demo", QUESTION)
    assert error is None
    assert final is not None
    exp = expected(30)
    assert exp.start.isoformat() == "2025-03-02"
    assert (
        f"Total spend over the last 30 days ({exp.start} to {exp.end}, all teams): "
        f"${exp.total:,.2f} across"
    ) in final
    team, model, alt, saving = exp.top_move
    assert (
        f"Moving 40% of the {model} traffic of team {team} to {alt} would save ${saving:,.2f} "
        "over the last 30 days"
    ) in final
    assert f"Moving 40% of all premium-model traffic would save ${exp.move_total:,.2f}" in final
    cache_team, cache_model, cache_saving = exp.top_cache
    assert (
        f"Raising the prompt-cache hit rate to 50% would save ${exp.cache_total:,.2f}; "
        f"the biggest gap is {cache_team} on {cache_model}"
    ) in final
    assert f"${cache_saving:,.2f})" in final


async def test_demo_delegates_to_sub_agents_with_paired_tool_calls() -> None:
    h = make()
    final, _ = await h.run("demo", QUESTION)
    runs = h.runs()
    demo_run = runs[0]
    assert [agent for _, agent, _ in h.delegations] == list(SUB_AGENTS)
    assert all(parent == demo_run for parent, _, _ in h.delegations)
    # Every run: started first, exactly one terminal event last, sub-runs nested.
    for run_id in runs:
        types = h.types(run_id)
        assert types[0] == "agent_started"
        assert types[-1] == "agent_completed"
        assert types.count("agent_completed") == 1
    positions = {
        run_id: [i for i, e in enumerate(h.events) if e.run_id == run_id] for run_id in runs
    }
    for sub in runs[1:]:
        assert {e.parent_run_id for e in h.events if e.run_id == sub} == {demo_run}
        assert positions[demo_run][0] < positions[sub][0]
        assert positions[sub][-1] < positions[demo_run][-1]
    assert_tools_paired(h.events)
    tools_by_agent = {
        (e.agent, e.data["tool_name"]) for e in h.events if e.type == "tool_completed"
    }
    assert tools_by_agent == {
        ("spend_analyst", "usage_metrics"),
        ("spend_analyst", "cost_breakdown"),
        ("savings_advisor", "savings_from_cheaper_models"),
        ("savings_advisor", "savings_from_caching"),
        ("report_writer", "draft_report"),
    }
    assert all(e.data["status"] == "success" for e in h.of_type("tool_completed"))
    # The supervisor thinks visibly, with rising progress, and streams its answer.
    progress = [
        e.data["progress"] for e in h.events if e.run_id == demo_run and "progress" in e.data
    ]
    assert progress == sorted(progress)
    assert len(progress) >= 4
    deltas = [e.data["delta"] for e in h.events if e.type == "text_delta"]
    assert "".join(deltas) == final  # unpaced: all in one coalescing window
    assert {e.run_id for e in h.of_type("text_delta")} == {demo_run}


async def test_demo_routes_a_spend_only_question_about_one_team() -> None:
    h = make()
    final, _ = await h.run("demo", "How much did the search team spend in the last 14 days?")
    assert final is not None
    assert [agent for _, agent, _ in h.delegations] == ["spend_analyst", "report_writer"]
    exp = expected(14, team="search")
    assert (
        f"Total spend over the last 14 days ({exp.start} to {exp.end}, team search): "
        f"${exp.total:,.2f}"
    ) in final
    assert "Moving" not in final


async def test_demo_routes_a_caching_question_and_share() -> None:
    h = make()
    final, _ = await h.run("demo", "Could prompt caching cut our bill over 60 days?")
    assert final is not None
    assert [agent for _, agent, _ in h.delegations] == list(SUB_AGENTS)
    assert "savings_from_cheaper_models" not in {
        e.data["tool_name"] for e in h.of_type("tool_completed")
    }
    assert f"${expected(60).cache_total:,.2f}" in final

    h = make()
    final, _ = await h.run("demo", "What if we moved 25% of traffic to cheaper models?")
    exp = expected(30, share=0.25)
    assert final is not None
    assert f"Moving 25% of all premium-model traffic would save ${exp.move_total:,.2f}" in final


async def test_demo_is_deterministic() -> None:
    answers = set()
    for _ in range(2):
        h = make()
        final, _ = await h.run("demo", QUESTION)
        answers.add(final)
    assert len(answers) == 1


async def test_demo_looks_live_but_finishes_within_three_seconds() -> None:
    h = make(pace=1.0)
    final, _ = await h.run("demo", QUESTION)
    assert final is not None
    elapsed = h.events[-1].at - h.events[0].at
    assert 0.5 < elapsed < 3.0
    # Streamed over several windows, each delta coalescing several chunks said.
    deltas = [e.data["delta"] for e in h.of_type("text_delta")]
    assert "".join(deltas) == final
    assert 1 < len(deltas) < len(final.split()) / 5


async def test_demo_tools_report_bad_arguments_to_the_agent() -> None:
    h = make()
    ctx = h.context()
    with pytest.raises(ToolError, match="unknown team 'nope'; teams are: analytics"):
        await ctx.call_tool("usage_metrics", team="nope")
    with pytest.raises(ToolError, match="argument `days`"):
        await ctx.call_tool("usage_metrics", days=365)
    assert [e.data.get("status") for e in h.events] == [None, "error", None, "error"]


def test_spend_data_matches_the_independent_computation() -> None:
    data = spend_data.load_usage()
    exp = expected(30)
    assert spend_data.usage_metrics(data, days=30)["cost_usd"] == exp.total
    savings = spend_data.savings_from_cheaper_models(data, days=30)
    assert savings["total_savings_usd"] == exp.move_total
    top = savings["opportunities"][0]
    assert (top["team"], top["model"], top["alternative"], top["savings_usd"]) == exp.top_move
    assert spend_data.savings_from_caching(data, days=30)["total_savings_usd"] == exp.cache_total
    assert {
        m: (p.input_per_mtok, p.output_per_mtok, p.cached_per_mtok)
        for m, p in spend_data.PRICES.items()
    } == PRICES

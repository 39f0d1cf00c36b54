"""The LLM benchmark: ChatAgent runs streaming through ``agentcast serve``, against the bare SDK.

``python bench/llm_bench.py [--preset smoke|full] [--json FILE]`` starts, each
as its own process on 127.0.0.1:

* the **model**: ``tests/llm/replay.py``'s replay server (``bench/llm_replay.py``),
  which sends each run's scripted tokens on an open-loop schedule;
* the **server under test**: ``python -m agentcast serve`` with the SQLite log
  (``synchronous=FULL``) serving ``bench.llm_agents:registry`` (a plain
  ``ChatAgent`` whose ``base_url`` is the replay server) and
  ``bench.agents:registry`` (W1's bench agent);
* the **viewers** (``bench/llm_load.py``): one WebSocket connection per run,
  which starts the run and follows it;
* the **baseline** (``bench/llm_bare.py``): the same concurrent streams read
  with the bare ``openai`` SDK and the same client settings, no agentcast;
* W1's load generator (``bench/load.py``).

With two CPUs the server and the baseline are pinned to the first, everything
else to the second, as ``bench/run.py`` does. Phases (every figure is a ratio
to a baseline measured in the same run):

1. **LLM streams**: baseline and agentcast phases alternate (A B A B in the
   full preset) so the machine's noise hits both. Per phase: token → screen
   latency p50/p99/max (agentcast), CPU per token of the measured process.
   *Added* CPU per token = agentcast's minus the baseline's, judged against the
   baseline's own.
2. **W1 under LLM load**: W1 alone on the server, then W1 while the LLM runs
   stream in the same process (alternated in the full preset); W1's p99
   ratio.

Every phase has a deadline and every child is stopped (``bench/procs.py``).
Exit status 1 when a run did not complete with exactly its scripted text, a
W1 phase saw a gap, duplicate, reorder or undelivered event, or a phase
failed; missed targets are reported (and fail only with ``--strict-targets``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # python bench/llm_bench.py: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.config import CORRECTNESS, REPO
from bench.procs import (
    LoadGen,
    _child_setup,
    _free_port,
    _http_ok,
    fsync_latency,
    machine_info,
    raise_nofile_limit,
    stop_process,
)

__all__ = ["LLM_PRESETS", "LlmPreset", "main"]

#: The W1 p99 under LLM load may be at most this many times W1's p99 alone.
W1_RATIO_TARGET: Final = 1.5
#: Token → screen p99 may exceed the coalescing window by at most this (ms).
LATENCY_SLACK_MS: Final = 10.0


@dataclass(frozen=True, slots=True)
class LlmPreset:
    """Sizes of one LLM benchmark run."""

    name: str
    runs: int  # concurrent ChatAgent runs (and baseline streams) per phase
    tokens_per_s: float  # each run's pace
    tokens: int  # tokens per run in the LLM-only phases
    rounds: int  # A/B pairs of each comparison
    w1_users: int
    w1_conns_pattern: tuple[int, ...]
    w1_rate: float
    w1_duration: float
    w1_warmup: float
    drain_timeout: float = 15.0


LLM_PRESETS: Final[dict[str, LlmPreset]] = {
    # CI: a few runs for a second each; only correctness is asserted.
    "smoke": LlmPreset(
        name="smoke",
        runs=5,
        tokens_per_s=60.0,
        tokens=60,
        rounds=1,
        w1_users=3,
        w1_conns_pattern=(1, 2, 3),
        w1_rate=60.0,
        w1_duration=2.0,
        w1_warmup=0.3,
        drain_timeout=10.0,
    ),
    # The figures of docs/performance.md: 50 runs at 60 tokens/s, 4 s of tokens each.
    "full": LlmPreset(
        name="full",
        runs=50,
        tokens_per_s=60.0,
        tokens=240,
        rounds=2,
        w1_users=50,
        w1_conns_pattern=(1, 2, 3, 2),  # 100 connections
        w1_rate=250.0,
        w1_duration=10.0,
        w1_warmup=2.0,
    ),
}


def _coalesce_ms() -> float:
    """The window ``ctx.say`` coalesces text in (``AGENTCAST_TEXT_COALESCE_MS``)."""
    from agentcast.settings import AgentcastSettings

    return float(AgentcastSettings().agents.text_coalesce_ms)


class _Proc:
    """A pinned child in its own session that dies with this process; stopped in every case."""

    def __init__(self, args: list[str], cpu: int | None, log: Path, env: dict[str, str]) -> None:
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            preexec_fn=_child_setup(cpu),
            start_new_session=True,
        )

    def result(self, timeout: float) -> dict[str, Any]:
        """Its one JSON line; a child past ``timeout`` is killed and reported."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return {"failed": f"no result within {timeout:.0f}s"}
        finally:
            self._log.close()
        lines = out.decode(errors="replace").strip().splitlines()
        if not lines:
            return {"failed": f"exited {self.proc.returncode} without a result"}
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def stop(self) -> None:
        """SIGTERM, then SIGKILL (bounded)."""
        stop_process(self.proc, timeout=5)
        if not self._log.closed:
            self._log.close()


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class LlmBench:
    """One run: the processes, the phases and their results."""

    def __init__(
        self,
        preset: LlmPreset,
        work: Path,
        server_cpu: int | None,
        other_cpu: int | None,
        verbose: bool,
    ) -> None:
        self.p = preset
        self.work = work
        self.server_cpu = server_cpu
        self.other_cpu = other_cpu
        self.verbose = verbose
        self.secret = os.urandom(24).hex()
        self.llm_rows: list[dict[str, Any]] = []
        self.w1_rows: list[dict[str, Any]] = []
        self._children: list[_Proc] = []
        self._server: subprocess.Popen[bytes] | None = None
        self._server_log: Any = None
        self._loadgen: LoadGen | None = None
        self._label = 0
        self._replay_pid = 0
        self.base_url = ""
        self.ws_url = ""
        #: ``sqlite`` (``synchronous=FULL``, the figures) or ``memory`` (to tell the
        #: disk's share of a latency from the rest).
        self.log_backend = "sqlite"
        #: Where the server's cProfile stats go (``None``: no profiler).
        self.profile: Path | None = None

    # Public methods

    def run(self) -> None:
        """Start the processes, run every phase, stop everything."""
        try:
            self._start_replay()
            self._start_server()
            self._loadgen = LoadGen(self.work, self.other_cpu)
            self._say("warm-up (not measured)")
            self._agentcast_phase("warmup", tokens=20, runs=min(5, self.p.runs))
            for r in range(1, self.p.rounds + 1):
                self.llm_rows.append(self._bare_phase(r))
                self.llm_rows.append(self._agentcast_phase(f"agentcast-{r}"))
            for r in range(1, self.p.rounds + 1):
                self.w1_rows.append(self._w1_phase(r, with_llm=False))
                self.w1_rows.append(self._w1_phase(r, with_llm=True))
        finally:
            self.close()

    def close(self) -> None:
        """Stop every child this run started."""
        for child in self._children:
            child.stop()
        self._children.clear()
        if self._loadgen is not None:
            self._loadgen.stop()
            self._loadgen = None
        if self._server is not None:
            stop_process(self._server)
            self._server = None
            self._server_log.close()

    # Private methods: processes

    def _start_replay(self) -> None:
        port_file = self.work / "replay.port"
        port_file.unlink(missing_ok=True)  # a kept work directory may hold an old one
        child = _Proc(
            [sys.executable, "-m", "bench.llm_replay", "--port-file", str(port_file)],
            self.other_cpu,
            self.work / "replay.log",
            _env(),
        )
        self._children.append(child)
        self._replay_pid = int(child.proc.pid)
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if child.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the replay server did not start (see replay.log)")
            time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{port_file.read_text().strip()}/v1"

    def _start_server(self) -> None:
        port = _free_port()
        self.ws_url = f"ws://127.0.0.1:{port}/v1/ws"
        profiler = ["-m", "cProfile", "-o", str(self.profile)] if self.profile else []
        args = [
            sys.executable,
            *profiler,
            "-m",
            "agentcast",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(self.work / "data"),
            "--agents",
            "bench.agents:registry",
            "--agents",
            "bench.llm_agents:registry",
            "--log-backend",
            self.log_backend,
            "--log-level",
            "warning",
        ]
        env = _env(
            AGENTCAST_JWT_SECRET=self.secret,
            AGENTCAST_SQLITE_SYNCHRONOUS="FULL",
            AGENTCAST_MAX_CONCURRENT_RUNS="10000",
            AGENTCAST_SHUTDOWN_GRACE_S="2",
            AGENTCAST_LLM_BASE_URL=self.base_url,
            AGENTCAST_DEFAULT_AGENT="bench_llm",
        )
        self._server_log = open(self.work / "server.log", "wb")  # noqa: SIM115 - closed in close()
        self._server = subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._server_log,
            stderr=subprocess.STDOUT,
            preexec_fn=_child_setup(self.server_cpu),
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while not _http_ok(f"http://127.0.0.1:{port}/readyz"):
            if self._server.poll() is not None or time.monotonic() > deadline:
                tail = (self.work / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"agentcast serve did not start:\n{tail}")
            time.sleep(0.1)

    @property
    def server_pid(self) -> int:
        assert self._server is not None
        return int(self._server.pid)

    def _spawn(self, module: str, spec: dict[str, Any], cpu: int | None, log: str) -> _Proc:
        child = _Proc(
            [sys.executable, "-m", module, "--spec", json.dumps(spec)], cpu, self.work / log, _env()
        )
        self._children.append(child)
        return child

    def _finish(self, child: _Proc, timeout: float) -> dict[str, Any]:
        result = child.result(timeout)
        self._children.remove(child)
        if self._server is not None and self._server.poll() is not None:
            result["failed"] = f"agentcast serve exited with {self._server.returncode}"
        return result

    # Private methods: phases

    def _next_label(self, prefix: str) -> str:
        self._label += 1
        return f"{prefix}{self._label}"

    def _bound(self, tokens: int) -> float:
        return 60.0 + tokens / self.p.tokens_per_s + self.p.drain_timeout

    def _bare_phase(self, round_: int) -> dict[str, Any]:
        spec = {
            "base_url": self.base_url,
            "label": self._next_label("b"),
            "runs": self.p.runs,
            "tokens_per_s": self.p.tokens_per_s,
            "tokens": self.p.tokens,
            "t0": 0.0,
            "drain_timeout": self.p.drain_timeout,
        }
        child = self._spawn("bench.llm_bare", spec, self.server_cpu, "bare.log")
        result = self._finish(child, self._bound(self.p.tokens))
        result.update(phase=f"bare-{round_}", side="bare SDK", round=round_)
        self._say(
            f"  bare SDK round {round_}: {result.get('cpu_us_per_token')} us/token, "
            f"{result.get('runs_ok')}/{self.p.runs} runs ok {result.get('failed') or ''}"
        )
        return result

    def _viewer_spec(self, tokens: int, runs: int, t0: float = 0.0) -> dict[str, Any]:
        return {
            "url": self.ws_url,
            "server_pid": self.server_pid,
            "replay_pid": self._replay_pid,
            "secret": self.secret,
            "label": self._next_label("l"),
            "runs": runs,
            "tokens_per_s": self.p.tokens_per_s,
            "tokens": tokens,
            "t0": t0,
            "lead": 1.0,
            "drain_timeout": self.p.drain_timeout,
        }

    def _agentcast_phase(
        self, name: str, tokens: int | None = None, runs: int | None = None
    ) -> dict[str, Any]:
        n = self.p.tokens if tokens is None else tokens
        spec = self._viewer_spec(n, self.p.runs if runs is None else runs)
        child = self._spawn("bench.llm_load", spec, self.other_cpu, "viewers.log")
        result = self._finish(child, self._bound(n))
        round_ = int(name.rsplit("-", 1)[-1]) if name[-1].isdigit() else 0
        result.update(phase=name, side="agentcast", round=round_)
        lat = result.get("latency_ms") or {}
        emit = result.get("emit_to_screen_ms") or {}
        self._say(
            f"  {name}: {result.get('cpu_us_per_token')} us/token, token p99 {lat.get('p99')} ms, "
            f"emit → screen p50/p99 {emit.get('p50')}/{emit.get('p99')} ms, "
            f"{result.get('runs_ok')}/{spec['runs']} runs ok {result.get('failed') or ''}"
        )
        return result

    def _w1_phase(self, round_: int, *, with_llm: bool) -> dict[str, Any]:
        p = self.p
        viewers: _Proc | None = None
        if with_llm:
            # The LLM runs start first and outlast W1's window: their first
            # token is due before W1's first slot, their last after its end.
            tokens = round(p.tokens_per_s * (p.w1_duration + 4.0))
            t0 = time.time() + 2.5
            spec_llm = self._viewer_spec(tokens, p.runs, t0=t0)
            viewers = self._spawn("bench.llm_load", spec_llm, self.other_cpu, "viewers.log")
            time.sleep(max(0.0, t0 - 0.5 - time.time()))
        spec = {
            "kind": "stream",
            "url": self.ws_url,
            "server_pid": self.server_pid,
            "secret": self.secret,
            "label": self._next_label("w"),
            "users": p.w1_users,
            "conns_pattern": list(p.w1_conns_pattern),
            "rate": p.w1_rate,
            "duration": p.w1_duration,
            "warmup": p.w1_warmup,
            "big_every": 0,
            "drain_timeout": p.drain_timeout,
            "lead": 1.0,
            "batch": False,
        }
        assert self._loadgen is not None
        result = self._loadgen.call(spec, timeout=120.0 + p.w1_duration + p.drain_timeout)
        name = f"W1{'+LLM' if with_llm else ''}-{round_}"
        result.update(phase=name, round=round_, with_llm=with_llm)
        if viewers is not None:
            llm = self._finish(viewers, self._bound(round(p.tokens_per_s * (p.w1_duration + 4))))
            llm.update(phase=f"LLM during W1-{round_}", side="agentcast", round=round_)
            result["llm"] = llm
        lat = result.get("latency_ms") or {}
        extra = ""
        if "llm" in result:
            llm_lat = result["llm"].get("latency_ms") or {}
            extra = f"; LLM token p99 {llm_lat.get('p99')} ms, {result['llm'].get('runs_ok')} ok"
        self._say(
            f"  {name}: W1 p99 {lat.get('p99')} ms, {result.get('delivered_per_s')} delivered/s, "
            f"server {result.get('server_cpu_cores')} cores{extra} {result.get('failed') or ''}"
        )
        return result

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stderr, flush=True)


# --- judging ---------------------------------------------------------------------------


def _per_token(rows: list[dict[str, Any]], side: str) -> float | None:
    """CPU µs per token over every round of one side (total CPU ÷ total tokens)."""
    chosen = [r for r in rows if r.get("side") == side and r.get("tokens")]
    tokens = sum(int(r["tokens"]) for r in chosen)
    return round(sum(float(r["cpu_s"]) for r in chosen) / tokens * 1e6, 2) if tokens else None


def _p99(row: dict[str, Any] | None) -> float | None:
    value = ((row or {}).get("latency_ms") or {}).get("p99")
    return float(value) if value is not None else None


def summarise(
    llm_rows: list[dict[str, Any]], w1_rows: list[dict[str, Any]], coalesce_ms: float
) -> dict[str, Any]:
    """The figures the targets are judged on, and the targets."""
    bare = _per_token(llm_rows, "bare SDK")
    ours = _per_token(llm_rows, "agentcast")
    added = round(ours - bare, 2) if bare is not None and ours is not None else None
    llm_p99 = [p for r in llm_rows if r.get("side") == "agentcast" and (p := _p99(r)) is not None]
    during = [r["llm"] for r in w1_rows if "llm" in r]
    during_p99 = [p for r in during if (p := _p99(r)) is not None]
    alone = [p for r in w1_rows if not r.get("with_llm") and (p := _p99(r)) is not None]
    loaded = [p for r in w1_rows if r.get("with_llm") and (p := _p99(r)) is not None]
    w1_ratio = (
        round(statistics.mean(loaded) / statistics.mean(alone), 2)
        if alone and loaded and statistics.mean(alone) > 0
        else None
    )
    latency_limit = coalesce_ms + LATENCY_SLACK_MS
    worst_p99 = max(llm_p99) if llm_p99 else None
    targets = [
        {
            "target": "token → screen p99 (LLM-only phases, worst round)",
            "wanted": f"<= {latency_limit:g} ms (coalescing {coalesce_ms:g} ms + 10)",
            "measured": worst_p99,
            "holds": worst_p99 is not None and worst_p99 <= latency_limit,
        },
        {
            "target": "agentcast's added CPU per token ÷ the bare SDK's",
            "wanted": "<= 1.0",
            "measured": round(added / bare, 2) if added is not None and bare else None,
            "holds": added is not None and bare is not None and added <= bare,
        },
        {
            "target": "W1 p99 with the LLM runs ÷ W1 p99 alone",
            "wanted": f"<= {W1_RATIO_TARGET:g}",
            "measured": w1_ratio,
            "holds": w1_ratio is not None and w1_ratio <= W1_RATIO_TARGET,
        },
    ]
    return {
        "coalesce_ms": coalesce_ms,
        "bare_cpu_us_per_token": bare,
        "agentcast_cpu_us_per_token": ours,
        "added_cpu_us_per_token": added,
        "token_latency_p99_ms_per_round": llm_p99,
        "token_latency_p99_ms_during_w1": during_p99,
        "w1_p99_ms_alone": alone,
        "w1_p99_ms_with_llm": loaded,
        "w1_p99_ratio": w1_ratio,
        "targets": targets,
    }


def problems_of(llm_rows: list[dict[str, Any]], w1_rows: list[dict[str, Any]]) -> list[str]:
    """Every correctness failure and failed phase (the exit status)."""
    found: list[str] = []
    rows = llm_rows + [r["llm"] for r in w1_rows if "llm" in r]
    for row in rows:
        name = row.get("phase", "?")
        if row.get("failed"):
            found.append(f"{name}: {row['failed']}")
            continue
        if row.get("runs_ok") != row.get("runs"):
            found.append(f"{name}: {row.get('runs_ok')}/{row.get('runs')} runs exactly as scripted")
        found.extend(f"{name}: {p}" for p in row.get("problems") or [])
        found.extend(f"{name}: {e}" for e in row.get("error_samples") or [])
        if row.get("side") == "bare SDK" and not row.get("warm_ok"):
            found.append(f"{name}: the warm-up answer differed from its script")
    for row in w1_rows:
        name = row.get("phase", "?")
        if row.get("failed"):
            found.append(f"{name}: {row['failed']}")
        for key in CORRECTNESS:
            if row.get(key):
                found.append(f"{name}: {key} = {row[key]}")
    return found


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(llm_rows: list[dict[str, Any]], w1_rows: list[dict[str, Any]]) -> str:
    """The per-phase table and the targets, as Markdown."""
    head = (
        "| phase | runs ok | tokens | CPU µs/token | cores | token p50 ms | p99 ms | max ms "
        "| model cores | other cores |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in llm_rows + [w["llm"] for w in w1_rows if "llm" in w]:
        lat = r.get("latency_ms") or {}
        cores = r.get("server_cpu_cores")
        if cores is None and r.get("cpu_s") is not None and r.get("window_s"):
            cores = round(float(r["cpu_s"]) / float(r["window_s"]), 3)
        lines.append(
            f"| {r.get('phase')} | {_fmt(r.get('runs_ok'))}/{_fmt(r.get('runs'))} "
            f"| {_fmt(r.get('tokens'))} | {_fmt(r.get('cpu_us_per_token'))} | {_fmt(cores)} "
            f"| {_fmt(lat.get('p50'))} | {_fmt(lat.get('p99'))} | {_fmt(lat.get('max'))} "
            f"| {_fmt(r.get('model_cpu_cores'))} | {_fmt(r.get('other_cpu_cores'))} |"
        )
    lines += [
        "",
        "| W1 phase | conns | R ev/s | p50 ms | p99 ms | max ms | delivered/s | server cores "
        "| loadgen cores | other cores | gaps/dup/reord/undeliv |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in w1_rows:
        lat = r.get("latency_ms") or {}
        errs = "/".join(str(r.get(k, "-")) for k in CORRECTNESS)
        lines.append(
            f"| {r.get('phase')} | {_fmt(r.get('connections'))} | {_fmt(r.get('rate'))} "
            f"| {_fmt(lat.get('p50'))} | {_fmt(lat.get('p99'))} | {_fmt(lat.get('max'))} "
            f"| {_fmt(r.get('delivered_per_s'))} | {_fmt(r.get('server_cpu_cores'))} "
            f"| {_fmt(r.get('loadgen_cpu_cores'))} | {_fmt(r.get('other_cpu_cores'))} | {errs} |"
        )
    return "\n".join(lines)


def targets_table(summary: dict[str, Any]) -> str:
    """The targets, as Markdown."""
    lines = ["| target | wanted | measured | holds |", "|---|---|---|---|"]
    for t in summary["targets"]:
        holds = "yes" if t["holds"] else "**no**"
        lines.append(f"| {t['target']} | {t['wanted']} | {_fmt(t['measured'])} | {holds} |")
    return "\n".join(lines)


# --- entry point -------------------------------------------------------------------------


def _override(preset: LlmPreset, assignments: list[str]) -> LlmPreset:
    """``--set FIELD=VALUE``: one field of the preset changed (to look around a figure)."""
    current = asdict(preset)
    changes: dict[str, Any] = {}
    for item in assignments:
        key, _, raw = item.partition("=")
        if key not in current or key == "name":
            raise SystemExit(f"--set: unknown field {key!r}")
        kind = type(current[key])
        changes[key] = tuple(int(x) for x in raw.split(",")) if kind is tuple else kind(raw)
    return replace(preset, **changes)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every run and phase was correct."""
    parser = argparse.ArgumentParser(
        prog="python bench/llm_bench.py",
        description="LLM benchmark: ChatAgent runs through agentcast vs the bare openai SDK.",
    )
    parser.add_argument("--preset", choices=sorted(LLM_PRESETS), default="smoke")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--work-dir", type=Path, help="data directory and logs (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--strict-targets", action="store_true", help="exit 1 if a target fails")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--log-backend",
        choices=("sqlite", "memory"),
        default="sqlite",
        help="the server's log (default: SQLite, synchronous=FULL)",
    )
    parser.add_argument(
        "--profile-server",
        type=Path,
        help="run the server under cProfile and write its stats here (slows it down)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a preset field, e.g. --set runs=25 (repeatable)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    preset = _override(LLM_PRESETS[args.preset], args.set)
    nofile = raise_nofile_limit()
    cpus = sorted(os.sched_getaffinity(0))
    pin = len(cpus) >= 2 and not args.no_pin
    server_cpu, other_cpu = (cpus[0], cpus[1]) if pin else (None, None)
    created = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="agentcast-llm-bench-")) if created else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    machine = machine_info(work)
    machine.update(
        {
            "rlimit_nofile": nofile,
            "server_cpu": server_cpu,
            "other_cpu": other_cpu,
            "pinning": "server and bare SDK on server_cpu; replay, viewers, W1 load on other_cpu",
        }
    )
    for dist in ("openai", "httpx"):
        import importlib.metadata

        try:
            machine["versions"][dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            machine["versions"][dist] = "missing"
    # The disk under the SQLite log: a slow or shared disk shows in every latency.
    machine["fsync_start"] = fsync_latency(work, 300 if preset.name == "full" else 20)
    bench = LlmBench(preset, work, server_cpu, other_cpu, verbose=not args.quiet)
    bench.profile = args.profile_server
    bench.log_backend = args.log_backend
    machine["log_backend"] = args.log_backend
    if not args.quiet:
        print(f"llm_bench --preset {preset.name}", file=sys.stderr)
    failure: str | None = None
    try:
        bench.run()
    except (RuntimeError, OSError, ValueError) as exc:
        failure = f"{type(exc).__name__}: {exc}"
        print(f"llm_bench: {failure}", file=sys.stderr)
    finally:
        bench.close()
    summary = summarise(bench.llm_rows, bench.w1_rows, _coalesce_ms())
    problems = problems_of(bench.llm_rows, bench.w1_rows)
    if failure is not None:
        problems.append(failure)
    expected = 2 * preset.rounds
    if len(bench.llm_rows) != expected or len(bench.w1_rows) != expected:
        problems.append("not every phase ran")
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["fsync_end"] = fsync_latency(work, 300 if preset.name == "full" else 20)
    report = {
        "preset": preset.name,
        "command": "python bench/llm_bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": started,
        "elapsed_s": round(time.time() - started, 1),
        "machine": machine,
        "preset_config": asdict(preset),
        "llm_phases": bench.llm_rows,
        "w1_phases": bench.w1_rows,
        "summary": summary,
        "correctness_ok": not problems,
        "problems": problems,
    }
    print(table(bench.llm_rows, bench.w1_rows))
    print()
    print(
        f"CPU per token: bare SDK {_fmt(summary['bare_cpu_us_per_token'])} µs, agentcast "
        f"{_fmt(summary['agentcast_cpu_us_per_token'])} µs, added "
        f"{_fmt(summary['added_cpu_us_per_token'])} µs"
    )
    print()
    print(targets_table(summary))
    print(
        f"\nfsync p99 {machine['fsync_start']['p99_ms']} -> {machine['fsync_end']['p99_ms']} ms "
        f"(max {machine['fsync_start']['max_ms']} -> {machine['fsync_end']['max_ms']}); "
        f"load average {machine['loadavg_start']} -> {machine['loadavg_end']}; "
        f"{report['elapsed_s']} s"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if created and not args.keep and failure is None:
        shutil.rmtree(work, ignore_errors=True)
    if problems:
        print("CORRECTNESS / FAILURES:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    if args.strict_targets and not all(t["holds"] for t in summary["targets"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

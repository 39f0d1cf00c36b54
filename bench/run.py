"""``python -m bench``: the load benchmark, end to end, against real server processes.

For every workload this orchestrator starts the server under test as its own
process on 127.0.0.1 — ``python -m agentcast serve`` with the bench agent
(``--agents bench.agents:registry``), with the SQLite log
(``synchronous=FULL``, the default), with the in-memory log and with PostgreSQL
(``--database-url`` on a database created for that server and dropped after
it; the database's CPU is read beside the server's), and the minimal uvicorn +
Starlette server of ``bench/baseline_server.py`` — and drives
it from a separate load-generator process (``bench/load.py``). Where the
machine has two CPUs or more, the server is pinned to one and the load
generator to another (``os.sched_setaffinity``), so they do not steal each
other's time slices. Both raise RLIMIT_NOFILE to the hard limit.

Workloads (docs/performance.md has the figures and the exact commands):

* **W1** agent streams: U users, 1-3 connections each on one thread, runs
  emitting at a total rate R on an open-loop schedule.
* **W2** saturation: W1's shape with R raised step by step until p99 passes
  50 ms (lowered step by step when the first step already does), then
  bisected between the last step under it and the first over it;
  the knee is the highest delivered events/s of a step that stayed under.
* **W3** idle connections: C authenticated, subscribed, idle connections;
  server memory per connection = RSS delta ÷ C (kernel TCP memory apart).
* **W4** reconnect storm: every connection drops at once mid-stream and
  resumes with ``after_seq`` within a jitter; time until all are live again.
* **W5** mixed sizes: W1 with 5 % of events 64 KiB tool results.

Every run is bounded (steps, durations, drains and process waits all have
deadlines) and cleans up its processes even when it fails. The exit status is
non-zero when any gap, duplicate, reorder or undelivered event was seen, or a
phase failed; targets missed are reported, and fail the run only with
``--strict-targets``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # python bench/run.py: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.config import CORRECTNESS, KNEE_P99_MS, PG_URL, PRESETS, Preset, Target
from bench.procs import (
    LoadGen,
    PgCpuSampler,
    Server,
    fsync_latency,
    machine_info,
    pg_activity,
    pg_settings,
    raise_nofile_limit,
)
from bench.report import (
    correctness_failures,
    efficiency,
    judge,
    markdown,
    table,
    targets_table,
)

__all__ = ["Bench", "main"]


# --- workloads -----------------------------------------------------------------------


@dataclass
class Bench:
    """One run of the benchmark: processes, results and the rules that judge them."""

    preset: Preset
    work: Path
    secret: str
    server_cpu: int | None
    loadgen_cpu: int | None
    verbose: bool = True
    rows: list[dict[str, Any]] = field(default_factory=list)
    fsync: dict[str, float] = field(default_factory=dict)
    #: PostgreSQL databases created for the servers (each dropped with its server).
    databases: list[str] = field(default_factory=list)
    _servers: dict[Target, Server] = field(default_factory=dict)
    _loadgen: LoadGen | None = None
    _label: int = 0

    # Public methods

    def run(self, workloads: list[str]) -> None:
        """Run the workloads in order (W1 and W5 first: W5 is judged against W1)."""
        self.fsync = fsync_latency(self.work, self.preset.fsync_samples)
        self._say(f"fsync p50 {self.fsync['p50_ms']} ms, p99 {self.fsync['p99_ms']} ms")
        self._loadgen = LoadGen(self.work, self.loadgen_cpu)
        try:
            for name in ("W1", "W5", "W2", "W3", "W4"):
                if name in workloads:
                    getattr(self, f"_{name.lower()}")()
        finally:
            self.close()

    def close(self) -> None:
        """Stop every process this run started."""
        for server in list(self._servers.values()):
            server.stop()
        self._servers.clear()
        if self._loadgen is not None:
            self._loadgen.stop()
            self._loadgen = None

    # Private methods: workloads

    def _w1(self) -> None:
        for target in self.preset.w1_targets:
            self._stream_row("W1", target, big_every=0)

    def _w5(self) -> None:
        for target in self.preset.w5_targets:
            self._stream_row("W5", target, big_every=self.preset.big_every)

    def _w2(self) -> None:
        for target in self.preset.w2_targets:
            self._w2_ramp(target)

    def _w2_ramp(self, target: Target) -> None:
        p = self.preset
        server = self._server(target, fresh=self.preset.fresh_servers)
        steps: list[dict[str, Any]] = []
        good: float | None = None
        bad: float | None = None
        rate = p.ramp_start
        for _ in range(p.ramp_steps):
            if not self._w2_step(server, target, rate, steps):
                bad = rate
                break
            good, rate = rate, round(rate * p.ramp_factor)
        # Past the rule from the first step: a knee of 0 says nothing, so step
        # down by the same factor (a bounded number of times) to one within it.
        refine = not any("failed" in s for s in steps)
        for _ in range(p.ramp_down_steps):
            if good is not None or bad is None or not refine:
                break
            rate = round(bad / p.ramp_factor)
            if self._w2_step(server, target, rate, steps):
                good = rate
            else:
                bad = rate
        # The ramp's factor is coarse: bisect (geometrically) between the last
        # step within the rule and the first one past it.
        for _ in range(p.ramp_refine):
            if good is None or bad is None or not refine:
                break
            mid = round(math.sqrt(good * bad))
            if mid in (good, bad):
                break
            if self._w2_step(server, target, mid, steps):
                good = mid
            else:
                bad = mid
        self._release(target)
        within = [s for s in steps if s["within_rule"]]
        knee = max(within, key=lambda s: s["delivered_per_s"]) if within else None
        row = self._row("W2", target, knee or {})
        row.update(
            {
                "knee_rule": f"highest delivered/s of a step with p99 <= {KNEE_P99_MS:g} ms",
                "knee_delivered_per_s": knee["delivered_per_s"] if knee else 0.0,
                "knee_rate": knee["rate"] if knee else None,
                "knee_reached": bad is not None,
                "steps": [_step_summary(s) for s in steps],
            }
        )
        for key in (*CORRECTNESS[:3], "errors"):
            row[key] = sum(int(s.get(key, 0)) for s in steps)
        # A step past the rule may still be delivering at its drain deadline:
        # lag, not loss; its holes (gaps) still count.
        row["undelivered"] = sum(int(s.get("undelivered", 0)) for s in within)
        row["failed"] = next((s["failed"] for s in steps if "failed" in s), None)
        self.rows.append(row)

    def _w2_step(
        self, server: Server, target: Target, rate: float, steps: list[dict[str, Any]]
    ) -> bool:
        """One W2 step at ``rate``, appended to ``steps``; whether it kept to the knee rule."""
        p = self.preset
        result = self._phase(
            server, self._stream_spec(server, rate, p.ramp_duration, p.ramp_warmup, 0)
        )
        result["rate"] = rate
        p99 = (result.get("latency_ms") or {}).get("p99")
        ok = "failed" not in result and p99 is not None and p99 <= KNEE_P99_MS
        result["within_rule"] = ok
        steps.append(result)
        self._say(
            f"  W2 {target.name} R={rate:.0f}: p99 {p99} ms, "
            f"{result.get('delivered_per_s')} delivered/s"
        )
        if not ok:  # the bisection's next step starts on an idle server
            result["settle_s"] = round(server.settle(), 2)
        return ok

    def _w3(self) -> None:
        p = self.preset
        for target in p.w3_targets:
            server = self._server(target, fresh=self.preset.fresh_servers)
            spec = {
                "kind": "idle",
                "url": server.url,
                "server_pid": server.pid,
                "secret": self._secret_for(target),
                "label": self._next_label("idle"),
                "connections": p.idle_connections,
                "conns_per_user": p.idle_per_user,
                "settle": p.idle_settle,
            }
            result = self._phase(server, spec)
            self._release(target)
            self.rows.append(self._row("W3", target, result))
            self._say(
                f"  W3 {target.name}: {result.get('server_kb_per_conn')} KB/connection "
                f"({result.get('connections')} connections)"
            )

    def _w4(self) -> None:
        p = self.preset
        for target in p.w4_targets:
            server = self._server(target, fresh=self.preset.fresh_servers)
            spec = self._stream_spec(server, p.storm_rate, p.storm_duration, p.warmup, 0)
            spec.update(
                users=p.storm_users,
                drop_at=p.storm_drop_at,
                reconnect_jitter=p.storm_jitter,
            )
            result = self._phase(server, spec)
            self._release(target)
            row = self._row("W4", target, result)
            self.rows.append(row)
            storm = result.get("storm") or {}
            self._say(
                f"  W4 {target.name}: {storm.get('clients')} clients, all live again after "
                f"{storm.get('all_live_s')} s"
            )

    # Private methods: helpers

    def _stream_row(self, workload: str, target: Target, big_every: int) -> None:
        p = self.preset
        server = self._server(target, fresh=p.fresh_servers)
        spec = self._stream_spec(server, p.rate, p.duration, p.warmup, big_every)
        result = self._phase(server, spec)
        self._release(target)
        self.rows.append(self._row(workload, target, result))
        lat = result.get("small_latency_ms" if big_every else "latency_ms") or {}
        self._say(
            f"  {workload} {target.name}: p99 {lat.get('p99')} ms, "
            f"{result.get('delivered_per_s')} delivered/s, "
            f"{result.get('cpu_us_per_event')} us/event"
        )

    def _stream_spec(
        self, server: Server, rate: float, duration: float, warmup: float, big_every: int
    ) -> dict[str, Any]:
        p = self.preset
        return {
            "kind": "stream",
            "url": server.url,
            "server_pid": server.pid,
            "secret": self._secret_for(server.target),
            "label": self._next_label("s"),
            "users": p.users,
            "conns_pattern": list(p.conns_pattern),
            "rate": rate,
            "duration": duration,
            "warmup": warmup,
            "big_every": big_every,
            "drain_timeout": p.drain_timeout,
            "lead": p.lead,
            "batch": server.target.batch,
        }

    def _phase(self, server: Server, spec: dict[str, Any]) -> dict[str, Any]:
        assert self._loadgen is not None
        bound = 120.0 + float(spec.get("duration", 0)) + float(spec.get("drain_timeout", 0))
        if server.proc.poll() is not None:
            return {"failed": f"{server.target.name} exited with {server.proc.returncode}"}
        db = server.database
        sampler = PgCpuSampler(db, server.pid).start() if db is not None else None
        activity = pg_activity(db.name) if db is not None else {}
        sent = time.time()
        try:
            result = self._loadgen.call(spec, timeout=bound)
        finally:
            returned = time.time()
            if sampler is not None:
                sampler.stop()
        if sampler is not None and result.get("window_s"):
            result.update(_postgres_figures(sampler, result, returned))
        if db is not None and activity:
            # The whole phase (set-up and drain included), not only the window.
            later = pg_activity(db.name)
            if later:
                span = max(1e-9, returned - sent)
                result["postgres_phase"] = {
                    "seconds": round(span, 2),
                    "checkpoints": later["checkpoints"] - activity["checkpoints"],
                    "commits_per_s": round(
                        (later["own_commits"] - activity["own_commits"]) / span, 1
                    ),
                    "other_databases_commits_per_s": round(
                        (later["other_commits"] - activity["other_commits"]) / span, 1
                    ),
                }
        if server.proc.poll() is not None:
            result["failed"] = f"{server.target.name} exited with {server.proc.returncode}"
        if "failed" in result:
            self._say(f"  phase failed on {server.target.name}: {result['failed']}")
        return result

    def _server(self, target: Target, *, fresh: bool) -> Server:
        existing = self._servers.get(target)
        if existing is not None and not fresh and existing.proc.poll() is None:
            return existing
        if existing is not None:
            existing.stop()
        server = Server(target, self.work, self.server_cpu, self.secret)
        if server.database is not None:
            self.databases.append(server.database.name)
        self._servers[target] = server
        return server

    def _release(self, target: Target) -> None:
        """After a workload: stop its server unless servers are shared (smoke)."""
        if self.preset.fresh_servers:
            server = self._servers.pop(target, None)
            if server is not None:
                server.stop()

    def _secret_for(self, target: Target) -> str | None:
        return self.secret if target.server == "agentcast" else None

    def _next_label(self, prefix: str) -> str:
        self._label += 1
        return f"{prefix}{self._label}"

    def _row(self, workload: str, target: Target, result: dict[str, Any]) -> dict[str, Any]:
        return {
            "workload": workload,
            "server": target.server,
            "log_backend": target.backend or "none",
            "target": target.name,
            "frames": target.frames,
            "durability": target.durability,
            "fsync_p99_ms": self.fsync.get("p99_ms"),
            **result,
        }

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stderr, flush=True)


def _postgres_figures(
    sampler: PgCpuSampler, result: dict[str, Any], returned: float
) -> dict[str, Any]:
    """PostgreSQL's CPU over the phase's measurement window, and agentcast's plus it.

    The load generator reports the window's length, not its place on the clock.
    W4 gives the place (``dropped_at`` is ``t0 + storm_drop_at``, the window ends
    at ``t0 + duration``); otherwise it ends ``drain_s`` before the load generator
    answered, less the time it took to close its connections — a bias of a
    fraction of a second, at the quiet end of the phase. ``postgres_window_check``
    shows how well the two windows agree.
    """
    span = float(result["window_s"])
    storm = result.get("storm") or {}
    if storm.get("dropped_at") is not None and "schedule_left_s" in storm:
        end = float(storm["dropped_at"]) + float(storm["schedule_left_s"])
    else:
        end = returned - float(result.get("drain_s") or 0.0)
    figures = sampler.window(
        end - span, end, int(result.get("delivered") or 0), result.get("server_cpu_s")
    )
    own, pg = result.get("cpu_us_per_event"), figures.get("postgres_cpu_us_per_event")
    if own is not None and pg is not None:
        figures["total_cpu_us_per_event"] = round(float(own) + float(pg), 2)
    if storm.get("all_live_s") is not None:
        start = float(storm["dropped_at"])
        during = sampler.window(start, start + float(storm["all_live_s"]), 0, None)
        storm["postgres_cpu_cores"] = during.get("postgres_cpu_cores")
    return figures


def _step_summary(step: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "rate",
        "within_rule",
        "settle_s",
        "delivered_per_s",
        "cpu_us_per_event",
        "postgres_cpu_us_per_event",
        "total_cpu_us_per_event",
        "server_cpu_cores",
        "postgres_cpu_cores",
        "postgres_phase",
        "loadgen_cpu_cores",
        "other_cpu_cores",
        "gaps",
        "duplicates",
        "reorders",
        "undelivered",
        "failed",
    )
    summary = {k: step[k] for k in keys if k in step}
    summary["latency_ms"] = step.get("latency_ms")
    return summary


# --- entry point ---------------------------------------------------------------------


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM/SIGHUP become SystemExit, so every ``finally`` stops its processes."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line of ``python -m bench`` and ``python bench/run.py``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load benchmark: agentcast vs a minimal uvicorn + Starlette baseline.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument(
        "--workloads", default="W1,W2,W3,W4,W5", help="comma-separated subset (default: all)"
    )
    parser.add_argument(
        "--servers",
        help="comma-separated subset of agentcast/sqlite, agentcast/memory, "
        "agentcast/sqlite+batch, agentcast/memory+batch, agentcast/postgres, baseline",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the server and load generator to CPUs"
    )
    parser.add_argument("--work-dir", type=Path, help="data directories and logs (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--strict-targets", action="store_true", help="exit 1 if a target fails")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--markdown", type=Path, help="write the docs/performance.md section")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a preset field, e.g. --set rate=3000 (repeatable)",
    )
    return parser.parse_args(argv)


def _override(preset: Preset, assignments: list[str]) -> Preset:
    changes: dict[str, Any] = {}
    current = asdict(preset)
    for item in assignments:
        key, _, raw = item.partition("=")
        if key not in current or key.endswith("_targets"):
            raise SystemExit(f"--set: unknown or unsupported field {key!r}")
        kind = type(current[key])
        changes[key] = tuple(int(x) for x in raw.split(",")) if kind is tuple else kind(raw)
    return replace(preset, **changes)


def _uses_postgres(preset: Preset, workloads: list[str]) -> bool:
    return any(
        t.backend == "postgres"
        for w in workloads
        if w in ("W1", "W2", "W3", "W4", "W5")
        for t in getattr(preset, f"{w.lower()}_targets")
    )


def _postgres_check(quiet: bool) -> dict[str, Any]:
    """The PostgreSQL server's settings (``SHOW``), before anything is measured on it.

    Raises RuntimeError when it cannot be reached (the run fails at once,
    naming :data:`bench.config.PG_URL`'s variable) or when
    ``synchronous_commit`` is off: the rows would claim a durability they lack.
    """
    try:
        settings = pg_settings(PG_URL)
    except RuntimeError as exc:
        raise RuntimeError(
            f"{exc} (AGENTCAST_BENCH_PG_URL; leave agentcast/postgres out with --servers)"
        ) from exc
    if settings.get("synchronous_commit") != "on":
        raise RuntimeError(
            f"PostgreSQL synchronous_commit={settings.get('synchronous_commit')}: "
            "agentcast/postgres is measured with it on"
        )
    if not quiet:
        print(_postgres_line(settings), file=sys.stderr)
    return settings


def _postgres_line(settings: dict[str, Any]) -> str:
    """The settings line every PostgreSQL figure is reported beside."""
    return (
        f"PostgreSQL {settings.get('server_version')}: fsync={settings.get('fsync')}, "
        f"synchronous_commit={settings.get('synchronous_commit')}, "
        f"wal_sync_method={settings.get('wal_sync_method')}, "
        f"shared_buffers={settings.get('shared_buffers')}, "
        f"commit_delay={settings.get('commit_delay')}, autovacuum={settings.get('autovacuum')}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every phase completed with zero correctness errors."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    preset = _override(PRESETS[args.preset], args.set)
    if args.servers:
        wanted = {name.strip() for name in args.servers.split(",")}
        subset: dict[str, Any] = {
            f"w{i}_targets": tuple(t for t in getattr(preset, f"w{i}_targets") if t.name in wanted)
            for i in range(1, 6)
        }
        preset = replace(preset, **subset)
    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    nofile = raise_nofile_limit()
    cpus = sorted(os.sched_getaffinity(0))
    pin = len(cpus) >= 2 and not args.no_pin
    server_cpu, loadgen_cpu = (cpus[0], cpus[1]) if pin else (None, None)
    created = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="agentcast-bench-")) if created else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    bench = Bench(
        preset=preset,
        work=work,
        secret=os.urandom(24).hex(),
        server_cpu=server_cpu,
        loadgen_cpu=loadgen_cpu,
        verbose=not args.quiet,
    )
    machine = machine_info(work)
    machine.update({"rlimit_nofile": nofile, "server_cpu": server_cpu, "loadgen_cpu": loadgen_cpu})
    if not args.quiet:
        print(f"python -m bench --preset {preset.name}: {', '.join(workloads)}", file=sys.stderr)
    failure: str | None = None
    postgres: dict[str, Any] | None = None
    try:
        with _terminate_as_exit():
            if _uses_postgres(preset, workloads):
                postgres = _postgres_check(args.quiet)
            bench.run(workloads)
    except (RuntimeError, OSError) as exc:
        failure = f"{type(exc).__name__}: {exc}"
        print(f"python -m bench: {failure}", file=sys.stderr)
    finally:
        bench.close()
        if created and not args.keep and failure is None:
            shutil.rmtree(work, ignore_errors=True)
    rows = bench.rows
    if postgres is not None:
        postgres["databases"] = bench.databases
    efficiency(rows)
    targets = judge(rows, preset) if preset.name == "full" else []
    problems = correctness_failures(rows)
    if failure is not None:
        problems.append(failure)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "preset": preset.name,
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": started,
        "elapsed_s": round(time.time() - started, 1),
        "machine": machine,
        "fsync": bench.fsync,
        "postgres": postgres,
        "knee_p99_ms": KNEE_P99_MS,
        "preset_config": {k: v for k, v in asdict(preset).items() if not k.endswith("_targets")},
        "results": rows,
        "targets": targets,
        "correctness_ok": not problems,
        "problems": problems,
    }
    print(table(rows))
    if targets:
        print()
        print(targets_table(targets))
    if postgres is not None:
        print(f"\n{_postgres_line(postgres)}")
    print(
        f"\nfsync p99 {bench.fsync.get('p99_ms')} ms; load average "
        f"{machine['loadavg_start']} -> {machine['loadavg_end']}; {report['elapsed_s']} s"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown is not None:
        args.markdown.write_text(markdown(report))
    if problems:
        print("CORRECTNESS / FAILURES:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    if args.strict_targets and any(t["holds"] is False for t in targets):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

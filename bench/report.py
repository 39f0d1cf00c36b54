"""Judging and printing a bench run: efficiency ratios, targets, correctness, tables."""

from __future__ import annotations

from typing import Any

from bench.config import (
    BASELINE,
    CORRECTNESS,
    KNEE_P99_MS,
    MEMLOG,
    MEMLOG_BATCH,
    MEMORY,
    NO_LOG,
    PG_SYNC,
    POSTGRES,
    SQLITE,
    SQLITE_BATCH,
    SQLITE_FULL,
    Preset,
    Target,
)

__all__ = ["correctness_failures", "efficiency", "judge", "table", "targets_table"]


def _find(rows: list[dict[str, Any]], workload: str, target: Target) -> dict[str, Any] | None:
    for row in rows:
        if (
            row["workload"] == workload
            and row["server"] == target.server
            and row["log_backend"] == (target.backend or "none")
            and row.get("frames", "per event") == target.frames
        ):
            return row
    return None


def _p99(row: dict[str, Any] | None, key: str = "latency_ms") -> float | None:
    if row is None:
        return None
    value = (row.get(key) or {}).get("p99")
    return float(value) if value is not None else None


def efficiency(rows: list[dict[str, Any]]) -> None:
    """Add each agentcast row's ratios to the baseline row of the same workload."""
    for row in rows:
        if row["server"] != "agentcast":
            continue
        base = _find(rows, row["workload"], BASELINE)
        if base is None:
            continue
        ratios: dict[str, float] = {}
        if row["workload"] == "W2":
            if base.get("knee_delivered_per_s"):
                ratios["knee_vs_baseline"] = round(
                    row["knee_delivered_per_s"] / base["knee_delivered_per_s"], 3
                )
        elif row["workload"] == "W3":
            if base.get("server_kb_per_conn") and row.get("server_kb_per_conn") is not None:
                ratios["memory_per_conn_x_baseline"] = round(
                    row["server_kb_per_conn"] / base["server_kb_per_conn"], 2
                )
        else:
            if base.get("cpu_us_per_event") and row.get("cpu_us_per_event"):
                ratios["cpu_per_event_x_baseline"] = round(
                    row["cpu_us_per_event"] / base["cpu_us_per_event"], 2
                )
            # PostgreSQL works in processes of its own: count them too, the fair
            # comparison with SQLite (in agentcast's process) and the baseline.
            if base.get("cpu_us_per_event") and row.get("total_cpu_us_per_event"):
                ratios["cpu_per_event_with_db_x_baseline"] = round(
                    row["total_cpu_us_per_event"] / base["cpu_us_per_event"], 2
                )
            key = "small_latency_ms" if row["workload"] == "W5" else "latency_ms"
            mine, theirs = _p99(row, key), _p99(base, key)
            if mine is not None and theirs:
                ratios["p99_x_baseline"] = round(mine / theirs, 2)
        row["efficiency"] = ratios


def judge(rows: list[dict[str, Any]], preset: Preset) -> list[dict[str, Any]]:
    """Each performance target, with the measured value and whether it holds."""
    targets: list[dict[str, Any]] = []

    def add(name: str, wanted: str, value: Any, holds: bool | None) -> None:
        targets.append({"target": name, "wanted": wanted, "measured": value, "holds": holds})

    w1 = _find(rows, "W1", SQLITE)
    if w1 is not None:
        conns = w1.get("connections")
        add(
            f"W1 p99 at R={preset.rate:g}/s over {conns} connections ({SQLITE_FULL})",
            "<= 10 ms",
            _p99(w1),
            _p99(w1) is not None and _p99(w1) <= 10.0,  # type: ignore[operator]
        )
    pg, w1_sqlite = _find(rows, "W1", POSTGRES), _p99(w1)
    if pg is not None and w1_sqlite:
        mine = _p99(pg)
        ratio = round(mine / w1_sqlite, 2) if mine is not None else None
        add(
            f"W1 p99 {POSTGRES.name} / {SQLITE.name} at R={preset.rate:g}/s ({PG_SYNC})",
            "<= 2x",
            ratio,
            ratio is not None and ratio <= 2.0,
        )
    base = _find(rows, "W2", BASELINE)
    shares = (
        (SQLITE, 0.2),
        (MEMLOG, 0.4),
        (SQLITE_BATCH, 0.2),
        (MEMLOG_BATCH, 0.4),
        (POSTGRES, 0.15),
    )
    for target, share in shares:
        row = _find(rows, "W2", target)
        if row is None or base is None:
            continue
        ratio = (row.get("efficiency") or {}).get("knee_vs_baseline")
        frames = "clients with ?batch=1" if target.batch else "a frame per event"
        add(
            f"W2 saturation {target.name} / baseline ({frames}; delivered events/s at "
            f"p99 <= {KNEE_P99_MS:g} ms)",
            f">= {share:.0%}",
            ratio,
            ratio is not None and ratio >= share,
        )
    w3 = _find(rows, "W3", SQLITE)
    if w3 is not None:
        kb = w3.get("server_kb_per_conn")
        add(
            f"W3 server memory per idle connection at {w3.get('connections')} connections",
            "<= 40 KB",
            kb,
            kb is not None and kb <= 40.0,
        )
    for target in (SQLITE, MEMLOG, POSTGRES):
        w4 = _find(rows, "W4", target)
        if w4 is None:
            continue
        storm = w4.get("storm") or {}
        live = storm.get("all_live_s")
        clean = all(int(w4.get(k, 0)) == 0 for k in ("gaps", "duplicates"))
        add(
            f"W4 {storm.get('clients')} clients all resumed ({target.name})",
            "<= 5 s, 0 gaps/duplicates",
            live,
            live is not None and live <= 5.0 and clean,
        )
    for target in (SQLITE, MEMLOG):
        w5, w1_same = _find(rows, "W5", target), _find(rows, "W1", target)
        if w5 is None or w1_same is None:
            continue
        small, ref = _p99(w5, "small_latency_ms"), _p99(w1_same)
        ratio = round(small / ref, 2) if small is not None and ref else None
        add(
            f"W5 small-event p99 / W1 p99 ({target.name})",
            "<= 1.5x",
            ratio,
            ratio is not None and ratio <= 1.5,
        )
    return targets


def correctness_failures(rows: list[dict[str, Any]]) -> list[str]:
    """Every row with a non-zero correctness counter or a failed phase."""
    problems: list[str] = []
    for row in rows:
        where = f"{row['workload']} {row.get('target') or row['server']}"
        if row.get("failed"):
            problems.append(f"{where}: failed: {row['failed']}")
        for key in CORRECTNESS:
            if int(row.get(key) or 0):
                problems.append(f"{where}: {key} = {row[key]}")
    return problems


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table (also what docs/performance.md shows)."""
    head = (
        "| workload | server | log (durability) | conns | R ev/s | p50 ms | p99 ms | p99.9 ms "
        "| max ms | delivered/s | CPU us/ev | RSS MB | gaps/dup/reord | vs baseline |"
    )
    lines = [head, "|" + "---|" * 14]
    for row in rows:
        key = "small_latency_ms" if row["workload"] == "W5" else "latency_ms"
        lat = row.get(key) or {}
        delivered = row.get("delivered_per_s")
        note = ", ".join(f"{k} {v}" for k, v in (row.get("efficiency") or {}).items())
        if row["workload"] == "W2":
            delivered = row.get("knee_delivered_per_s")
            note = (note + "; " if note else "") + (
                "knee" if row.get("knee_reached") else "knee not reached"
            )
        elif row["workload"] == "W3":
            delivered = None
            extra = (
                f"{row.get('server_kb_per_conn')} KB/conn server, "
                f"{row.get('kernel_tcp_kb_per_conn_both_ends')} KB/conn kernel (both ends)"
            )
            note = f"{extra}; {note}" if note else extra
        elif row["workload"] == "W4":
            storm = row.get("storm") or {}
            extra = f"all live after {storm.get('all_live_s')} s"
            note = f"{extra}; {note}" if note else extra
        elif row["workload"] == "W5":
            big = row.get("big_latency_ms") or {}
            extra = f"64 KiB events p99 {big.get('p99')} ms"
            note = f"{extra}; {note}" if note else extra
        rate = row.get("knee_rate") if row["workload"] == "W2" else row.get("rate")
        backend = row["log_backend"]
        durability = {
            SQLITE_FULL: "FULL",
            MEMORY: "none",
            NO_LOG: "no log",
            PG_SYNC: "sync commit",
        }.get(row["durability"], row["durability"])
        cpu = _fmt(row.get("cpu_us_per_event"), 0)
        if row.get("postgres_cpu_us_per_event") is not None:  # agentcast + the database's
            cpu += f" + {_fmt(row['postgres_cpu_us_per_event'], 0)} db"
        counters = "/".join(str(row.get(k, "-")) for k in ("gaps", "duplicates", "reorders"))
        lines.append(
            "| "
            + " | ".join(
                [
                    row["workload"],
                    row["server"] + (" (batch=1)" if row.get("frames") == "batch=1" else ""),
                    f"{backend} ({durability})",
                    _fmt(row.get("connections")),
                    _fmt(rate, 0),
                    _fmt(lat.get("p50"), 2),
                    _fmt(lat.get("p99"), 2),
                    _fmt(lat.get("p999"), 2),
                    _fmt(lat.get("max"), 2),
                    _fmt(delivered, 0),
                    cpu,
                    _fmt(row.get("server_rss_mb")),
                    counters,
                    note or "",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def targets_table(targets: list[dict[str, Any]]) -> str:
    """The targets as a Markdown table."""
    lines = ["| target | wanted | measured | holds |", "|---|---|---|---|"]
    for t in targets:
        holds = {True: "yes", False: "**no**", None: "-"}[t["holds"]]
        lines.append(f"| {t['target']} | {t['wanted']} | {_fmt(t['measured'], 2)} | {holds} |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """docs/performance.md's ``## Load benchmark (python -m bench)`` section, from a run."""
    m = report["machine"]
    v = m["versions"]
    fsync = report["fsync"]
    other = [
        f"{row['workload']} {row['server']}/{row['log_backend']}: {row.get('other_cpu_cores')}"
        for row in report["results"]
        if row.get("other_cpu_cores") is not None
    ]
    pg = report.get("postgres")
    pg_line = (
        f" PostgreSQL {pg.get('server_version')} on the same machine, not pinned: "
        f"fsync={pg.get('fsync')}, synchronous_commit={pg.get('synchronous_commit')}, "
        f"wal_sync_method={pg.get('wal_sync_method')}, "
        f"shared_buffers={pg.get('shared_buffers')}; its CPU (the server's database's "
        "backends and PostgreSQL's own processes) is the `+ … db` of the CPU column."
        if pg
        else ""
    )
    lines = [
        "## Load benchmark (python -m bench)",
        "",
        f"Command: `{report['command']}` ({report['elapsed_s']} s). Machine: "
        f"{m['nproc']} CPUs ({m['cpu_model']}), Linux {m['kernel']}; server pinned to CPU "
        f"{m['server_cpu']}, load generator to CPU {m['loadgen_cpu']}. Python {v['python']}, "
        f"SQLite {v['sqlite']}, uvicorn {v['uvicorn']}, Starlette {v['starlette']}, "
        f"websockets {v['websockets']}, uvloop {v['uvloop']}. Disk fsync (4 KiB, "
        f"{fsync['samples']} samples): p50 {fsync['p50_ms']} ms, **p99 {fsync['p99_ms']} ms**, "
        f"max {fsync['max_ms']} ms. Load average {m['loadavg_start']} before, "
        f"{m['loadavg_end']} after.{pg_line}",
        "",
        "Latency = client receipt - the slot's scheduled time (open loop). W5's columns are "
        "the small events; W2's row is the knee step; W3's RSS is after opening the "
        "connections. `vs baseline`: agentcast ÷ baseline (CPU per event, p99, memory) or "
        "the knee ratio.",
        "",
        table(report["results"]),
        "",
        targets_table(report["targets"]),
        "",
        "CPU used by other processes during each phase (cores, of "
        f"{m['nproc']}): " + "; ".join(other) + ".",
    ]
    return "\n".join(lines) + "\n"

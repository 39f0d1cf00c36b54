"""Engine micro-benchmark: durable append throughput and emit→follower latency.

Measures, on this machine and in this run:

1. the disk's fsync latency (context for every durable figure);
2. ``log.append`` throughput with ``--producers`` concurrent producers, one
   event per call (only the database writer's group commit batches them: the
   worst case for the log, which no server component produces);
3. ``bridge.emit()`` throughput with the same number of concurrent emitters;
4. emit→follower latency at ``--rate`` events/s on an open-loop schedule: each
   event is due at an absolute time, and latency is measured from that time,
   so a slow commit cannot hide behind a late send (no coordinated omission).

Every figure names its backend and durability mode (SQLite ``FULL`` unless
``--modes`` says otherwise). Run: ``python bench/engine_bench.py [--json PATH]``.

``--modes …,postgres`` adds the PostgreSQL log (a database of its own per
phase on ``AGENTCAST_BENCH_PG_URL``, created and dropped here: ``pg_bench.py``)
with the same three figures, printed beside the server's settings, plus:

5. emit→follower latency with the follower in a second process (the
   notification path: ``LISTEN``, then a read of what the thread gained);
6. append throughput of 1, 2 and 4 writer *processes* on one database, to
   distinct threads and to one shared thread (every notifying commit takes
   an instance-wide lock; a shared thread's row lock serializes the writers).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pg_bench
from agentcast.bridge import Bridge
from agentcast.config import EngineSettings
from agentcast.db.sqlite import SqliteDatabase
from agentcast.events import encode_payload
from agentcast.log.base import EventDraft, EventLog
from agentcast.log.memory import MemoryLog
from agentcast.log.postgres import PostgresLog
from agentcast.log.sqlite import SqliteLog
from agentcast.types import new_event_id

PAYLOAD = encode_payload("agent_thinking", {"reasoning": "x" * 120, "progress": 0.5})


def quantiles(samples: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / p99.9 / max in milliseconds."""
    if not samples:
        return {"p50": 0.0, "p99": 0.0, "p99.9": 0.0, "max": 0.0}
    s = sorted(samples)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] * 1000

    return {"p50": q(0.50), "p99": q(0.99), "p99.9": q(0.999), "max": s[-1] * 1000}


def fsync_latency(directory: Path, count: int = 500) -> dict[str, float]:
    """Write 4 KiB and fsync, ``count`` times."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    samples = []
    try:
        for _ in range(count):
            os.write(fd, b"x" * 4096)
            t = time.perf_counter()
            os.fsync(fd)
            samples.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink()
    return quantiles(samples)


#: Closes what :func:`open_log` opened behind the log (its database), after the log.
Closer = Callable[[], Awaitable[None]]
#: The database URL of each open PostgreSQL log (by ``id``), for its other processes.
PG_URLS: dict[int, str] = {}


async def _nothing() -> None:
    return None


async def open_log(mode: str, directory: Path) -> tuple[EventLog, Closer]:
    """A fresh log of ``mode`` (``memory``, ``postgres`` or a SQLite ``synchronous``)."""
    if mode == "memory":
        log: EventLog = MemoryLog()
        await log.open()
        return log, _nothing
    if mode == "postgres":
        url = await pg_bench.create_database()
        pg_log = await pg_bench.open_pg_log(url)
        PG_URLS[id(pg_log)] = url

        async def close_pg() -> None:
            PG_URLS.pop(id(pg_log), None)
            await pg_log.db.close()
            await pg_bench.drop_database(url)

        return pg_log, close_pg
    db = SqliteDatabase(directory / mode, synchronous=mode)  # type: ignore[arg-type]
    await db.open()
    log = SqliteLog(db)
    await log.open()
    return log, db.close


async def close_log(log: EventLog, closer: Closer) -> None:
    await log.close()
    await closer()


async def append_throughput(log: EventLog, producers: int, seconds: float) -> dict[str, Any]:
    """Each producer appends one event per call to its own thread until time is up."""
    deadline = time.perf_counter() + seconds
    counts = [0] * producers

    async def producer(i: int) -> None:
        thread = f"bench_{i}"
        while time.perf_counter() < deadline:
            draft = EventDraft(
                new_event_id(), thread, "run", None, "agent_thinking", time.time(), "bench",
                PAYLOAD,
            )  # fmt: skip
            await log.append([draft])
            counts[i] += 1

    started = time.perf_counter()
    await asyncio.gather(*(producer(i) for i in range(producers)))
    elapsed = time.perf_counter() - started
    return {"events": sum(counts), "seconds": elapsed, "events_per_s": sum(counts) / elapsed}


async def emit_throughput(bridge: Bridge, emitters: int, seconds: float) -> dict[str, Any]:
    deadline = time.perf_counter() + seconds
    counts = [0] * emitters
    data = {"reasoning": "x" * 120, "progress": 0.5}

    async def emitter(i: int) -> None:
        thread = f"emit_{i}"
        while time.perf_counter() < deadline:
            await bridge.emit(
                thread_id=thread, run_id="run", agent="bench", event_type="agent_thinking",
                data=data,
            )  # fmt: skip
            counts[i] += 1

    started = time.perf_counter()
    await asyncio.gather(*(emitter(i) for i in range(emitters)))
    elapsed = time.perf_counter() - started
    return {"events": sum(counts), "seconds": elapsed, "events_per_s": sum(counts) / elapsed}


async def emit_on_schedule(
    bridge: Bridge, threads: list[str], rate: float, total: int, due: dict[str, float]
) -> set[asyncio.Task[Any]]:
    """Emit ``total`` events at ``rate``/s, each due at an absolute time (open loop).

    The due time goes into ``due`` and into the event (``due=…`` in its
    reasoning), for a follower in another process.
    """
    loop = asyncio.get_running_loop()
    start = time.perf_counter() + 0.01
    pending: set[asyncio.Task[Any]] = set()
    for i in range(total):
        at = start + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        event_id = new_event_id()
        due[event_id] = at
        task = loop.create_task(
            bridge.emit(
                thread_id=threads[i % len(threads)], run_id="run", agent="bench",
                event_type="agent_thinking", data={"reasoning": f"due={at!r}", "progress": 0.5},
                event_id=event_id,
            )
        )  # fmt: skip
        pending.add(task)
        task.add_done_callback(pending.discard)
    return pending


async def follower_latency(bridge: Bridge, rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop emits at ``rate``/s into 10 threads; one follower per thread."""
    threads = [f"lat_{i}" for i in range(10)]
    total = int(rate * seconds)
    due: dict[str, float] = {}
    samples: list[float] = []
    received = 0
    done = asyncio.Event()

    async def follow(thread: str) -> None:
        nonlocal received
        info = await bridge.info(thread)
        follower = await bridge.follow(thread, info.last_seq, info.epoch)
        try:
            while True:
                for ev in await follower.next_batch(1024):
                    samples.append(time.perf_counter() - due.pop(ev.event_id))
                    received += 1
                if received >= total:
                    done.set()
                    return
        finally:
            await follower.aclose()

    followers = [asyncio.create_task(follow(t)) for t in threads]
    await asyncio.sleep(0.05)
    pending = await emit_on_schedule(bridge, threads, rate, total, due)
    await asyncio.wait_for(done.wait(), timeout=seconds + 30)
    for f in followers:
        f.cancel()
    await asyncio.gather(*followers, return_exceptions=True)
    await asyncio.gather(*pending, return_exceptions=True)
    return {"events": received, "rate": rate, "latency_ms": quantiles(samples)}


async def remote_follower_latency(
    bridge: Bridge, url: str, rate: float, seconds: float
) -> dict[str, Any]:
    """As :func:`follower_latency`, the followers in another process on the same database."""
    threads = [f"lat_{i}" for i in range(10)]
    for thread in threads:
        await bridge.info(thread)  # the streams exist before the follower looks them up
    total = int(rate * seconds)
    child = await pg_bench.spawn(
        "follow", "--url", url, "--threads", ",".join(threads), "--count", str(total)
    )
    try:
        await pg_bench.expect_ready(child)
        pending = await emit_on_schedule(bridge, threads, rate, total, {})
        result = await pg_bench.result_of(child, seconds + 60)
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    samples = result["samples"]
    return {"events": len(samples), "rate": rate, "latency_ms": quantiles(samples)}


async def writer_processes(
    url: str, processes: int, producers: int, seconds: float, *, shared: bool
) -> dict[str, Any]:
    """``processes`` writer processes on one database, started together; their total rate."""
    flags = ["--url", url, "--producers", str(producers), "--seconds", str(seconds)]
    if shared:
        flags.append("--shared")
    children = [await pg_bench.spawn("write", *flags, "--tag", str(k)) for k in range(processes)]
    try:
        for child in children:
            await pg_bench.expect_ready(child)
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        results = [await pg_bench.result_of(child, seconds + 60) for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    events = sum(r["events"] for r in results)
    elapsed = max(r["seconds"] for r in results)
    return {
        "processes": processes,
        "producers_each": producers,
        "shared_thread": shared,
        "events": events,
        "seconds": elapsed,
        "events_per_s": events / elapsed,
        "per_process": [r["events"] / r["seconds"] for r in results],
        "groups": sum(r["groups"] for r in results),
        "groups_retried": sum(r["retried"] for r in results),
    }


async def run_mode(mode: str, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"mode": mode}
    if mode == "postgres":
        result["settings"] = await pg_bench.pg_settings()
    log, closer = await open_log(mode, directory)
    try:
        result["append"] = await append_throughput(log, args.producers, args.seconds)
        if isinstance(log, PostgresLog):
            result["append"]["writer"] = dataclasses.asdict(log.db.stats)
    finally:
        await close_log(log, closer)
    # Each phase gets a fresh database, so that the latency phase measures the
    # steady state at its rate, not the checkpoint backlog of a saturation phase.
    phases = ["emit", "follow"] + (["follow_remote"] if mode == "postgres" else [])
    for phase in phases:
        log, closer = await open_log(mode, directory / phase)
        bridge = Bridge(log, EngineSettings(health_interval_s=3600))
        try:
            await bridge.ensure_integration()
            if phase == "emit":
                result["emit"] = await emit_throughput(bridge, args.producers, args.seconds)
            elif phase == "follow":
                result["follow"] = await follower_latency(bridge, args.rate, args.seconds)
            else:
                url = PG_URLS[id(log)]
                result[phase] = await remote_follower_latency(bridge, url, args.rate, args.seconds)
        finally:
            await bridge.close()
            await closer()
    if mode == "postgres" and args.writer_procs:
        result["writer_procs"] = []
        for shared in (False, True):
            for processes in (int(n) for n in args.writer_procs.split(",")):
                url = await pg_bench.create_database()
                try:
                    result["writer_procs"].append(
                        await writer_processes(
                            url, processes, args.proc_producers, args.seconds, shared=shared
                        )
                    )
                finally:
                    await pg_bench.drop_database(url)
    return result


def table(report: dict[str, Any]) -> str:
    f = report["fsync_ms"]
    lines = [
        f"machine: {report['machine']}  python {report['python']}",
        f"fsync (4 KiB): p50 {f['p50']:.3f} ms  p99 {f['p99']:.3f} ms",
        f"{report['producers']} concurrent producers, {report['seconds']} s per figure; "
        f"follower latency at {report['rate']:.0f} events/s (open loop)",
        "",
        f"{'log (mode)':<16}{'append ev/s':>13}{'emit ev/s':>12}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'max ms':>9}",
    ]
    for r in report["results"]:
        lat = r["follow"]["latency_ms"]
        name = {"memory": "memory", "postgres": "postgres"}.get(r["mode"], f"sqlite ({r['mode']})")
        lines.append(
            f"{name:<16}{r['append']['events_per_s']:>13,.0f}{r['emit']['events_per_s']:>12,.0f}"
            f"{lat['p50']:>9.3f}{lat['p99']:>9.3f}{lat['p99.9']:>10.3f}{lat['max']:>9.3f}"
        )
        if "follow_remote" in r:
            lat = r["follow_remote"]["latency_ms"]
            lines.append(
                f"{'  other process':<41}"
                f"{lat['p50']:>9.3f}{lat['p99']:>9.3f}{lat['p99.9']:>10.3f}{lat['max']:>9.3f}"
            )
    for r in report["results"]:
        if r["mode"] == "postgres":
            lines += ["", *postgres_lines(r, report["results"])]
    return "\n".join(lines)


def postgres_lines(r: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    """The PostgreSQL settings, the writer processes, and the targets met or not."""
    setting = pg_bench.settings_line(r["settings"])
    writer = r["append"].get("writer", {})
    batches = writer.get("batches_run", 0)
    lines = [
        f"postgres: {setting}",
        f"  append: {writer.get('groups_committed', 0):,} groups, "
        f"{writer.get('batched_items', 0) / max(batches, 1):.1f} appends per merged call",
    ]
    for w in r.get("writer_procs", []):
        where = "one shared thread" if w["shared_thread"] else "distinct threads"
        each = ", ".join(f"{x:,.0f}" for x in w["per_process"])
        lines.append(
            f"  {w['processes']} writer process(es) x {w['producers_each']} producers, {where}: "
            f"{w['events_per_s']:,.0f} appends/s ({each}); "
            f"{w['groups']:,} groups, {w['groups_retried']} retried  [{setting}]"
        )
    appends = r["append"]["events_per_s"]
    full = next((x["append"]["events_per_s"] for x in results if x["mode"] == "FULL"), None)
    lines.append(f"  target >= 10,000 appends/s: {'met' if appends >= 10_000 else 'NOT met'}")
    if full:
        share = appends / full
        lines.append(
            f"  target >= 25 % of SQLite FULL: {share:.0%} "
            f"({'met' if share >= 0.25 else 'NOT met'})"
        )
    for key, where in (("follow", "in process"), ("follow_remote", "across processes")):
        if key in r:
            p99 = r[key]["latency_ms"]["p99"]
            lines.append(
                f"  target p99 <= 5 ms {where}: {p99:.2f} ms ({'met' if p99 <= 5 else 'NOT met'})"
            )
    return lines


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--producers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument(
        "--modes", default="FULL,NORMAL,memory", help="SQLite modes, memory, postgres"
    )
    parser.add_argument(
        "--writer-procs", default="1,2,4", help="postgres: writer process counts ('' for none)"
    )
    parser.add_argument("--proc-producers", type=int, default=50, help="producers per process")
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        report: dict[str, Any] = {
            "machine": f"{platform.machine()} {os.cpu_count()} cores {platform.system()}",
            "python": platform.python_version(),
            "producers": args.producers,
            "seconds": args.seconds,
            "rate": args.rate,
            "fsync_ms": fsync_latency(directory),
            "results": [],
        }
        for mode in args.modes.split(","):
            report["results"].append(await run_mode(mode.strip(), directory, args))
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

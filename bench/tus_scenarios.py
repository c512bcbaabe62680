"""The ``tus`` scenario of bench/run.py: csvstore's tus endpoint against @tus/server.

The peer is the tus project's Node.js server (@tus/server with @tus/file-store, pinned by
bench/tus_peer/package-lock.json, installed with ``npm ci`` into the git-ignored
bench/tus_peer/node_modules), started as ``node bench/tus_peer/server.js PORT DIR``.
Each case runs on the peer, then on csvstore, in alternating rounds; the table gives each
round and the median. Skipped with a note where ``node`` or ``npm`` is missing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench.run import (
    BENCH_DIR,
    HOST,
    KIB,
    MB,
    MIB,
    NOISE_PERCENT,
    SERVER_START_TIMEOUT,
    BenchError,
    Check,
    CpuUse,
    CpuWindow,
    Harness,
    Report,
    Row,
    Server,
    Settings,
    WrkResult,
    client,
    create_session,
    csv_block,
    free_port,
    get_json,
    log_tail,
    multipart_body,
    run_wrk,
    settle,
    size_label,
    verify_recorded,
    write_big_csv,
)

PEER_DIR = BENCH_DIR / "tus_peer"
PEER_PINS = {"@tus/server": "2.4.5", "@tus/file-store": "2.1.1"}
PEER_PATH = "/files/"
CSVSTORE_PATH = "/api/csv/tus/"
TUS_LUA = BENCH_DIR / "tus_create.lua"
CLIENT = BENCH_DIR / "tus_client.py"
CHUNK = 8 * MIB
SMALL_CONNS = 8
ROUNDS = 2
EXTRA_ROUNDS = 2  # full run: rounds added while fewer than ROUNDS were undisturbed
# Rounds whose csvstore/peer ratios differ by more than this get one more round to decide
# (a disk stall slows one server in one round: 159 and 583 MB/s for one peer at stop 30).
DISAGREE = 1.3
SAMPLE = 200  # stored small files compared byte for byte, per measurement

T = TypeVar("T")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def metadata(session_id: str, filename: str) -> str:
    return f"session_id {b64(session_id)},filename {b64(filename)}"


# --------------------------------------------------------------------------- the peer


def installed_pins() -> dict[str, str]:
    found = {}
    for name in PEER_PINS:
        with contextlib.suppress(OSError, ValueError, KeyError):
            meta = json.loads((PEER_DIR / "node_modules" / name / "package.json").read_text())
            found[name] = str(meta["version"])
    return found


def ensure_peer() -> str | None:
    """Install the pinned peer if needed; None when ready, else why the scenario is skipped."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        missing = " and ".join(x for x, p in (("node", node), ("npm", npm)) if not p)
        return (
            f"tus scenario skipped: {missing} not found (it runs @tus/server, installed with "
            "npm ci from bench/tus_peer/package-lock.json; install Node.js >= 20 and npm)"
        )
    if installed_pins() != PEER_PINS:
        print("  installing @tus/server with npm ci into bench/tus_peer/node_modules", flush=True)
        done = subprocess.run(
            [npm, "ci", "--prefix", str(PEER_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
            capture_output=True, text=True, timeout=600, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if done.returncode != 0:
            return f"tus scenario skipped: npm ci in bench/tus_peer failed:\n{done.stderr[-1500:]}"
    if installed_pins() != PEER_PINS:
        return f"tus scenario skipped: bench/tus_peer has {installed_pins()}, not {PEER_PINS}"
    return None


def node_version() -> str:
    done = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


async def wait_options(server: Server, path: str) -> None:
    """Ready when OPTIONS on the creation URL answers 204 (tus discovery)."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            code = server.proc.poll()
            if code is not None:
                raise BenchError(f"{server.label} exited with code {code}:\n{log_tail(server)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.options(server.base + path) as resp:
                    await resp.read()
                    if resp.status == 204:
                        return
            if time.monotonic() > deadline:
                raise BenchError(f"{server.label} did not answer OPTIONS:\n{log_tail(server)}")
            await asyncio.sleep(0.1)


async def start_peer(h: Harness) -> Server:
    port = free_port()
    work = h.tmp("tus-peer")
    data_dir = work / "data"
    log_path = work / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["node", str(PEER_DIR / "server.js"), str(port), str(data_dir)],
            cwd=PEER_DIR, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    server = Server("@tus/server", "tus-peer", proc, port, data_dir, log_path)
    h.servers.append(server)
    await wait_options(server, PEER_PATH)
    return server


async def start(h: Harness, kind: str) -> Server:
    return await start_peer(h) if kind == "peer" else await h.start("csvstore")


def creation_path(server: Server) -> str:
    return PEER_PATH if server.kind == "tus-peer" else CSVSTORE_PATH


# --------------------------------------------------------------------------- large


@dataclass
class LargeRun:
    server: str
    round: int
    mb_s: float
    wall_s: float
    codes: list[int]
    check: str
    ok: bool
    cpu: CpuUse


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MIB):
            h.update(block)
    return h.hexdigest()


async def large_once(
    h: Harness, kind: str, path: Path, size: int, chunk: int, digest: str, rnd: int
) -> LargeRun:
    server = await start(h, kind)
    sid = f"bench-tus-{uuid.uuid4().hex[:8]}"
    if server.kind != "tus-peer":
        async with client() as http:
            await create_session(http, server, sid)
    await settle()
    cmd = [sys.executable, str(CLIENT), server.base + creation_path(server), str(path)]
    cmd += [str(chunk), metadata(sid, path.name)]
    window = CpuWindow(server.proc.pid)
    window.start()
    code, out, err = await h.run(cmd, timeout=900)
    cpu = window.stop()
    try:
        res: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        res = {"codes": [], "error": f"client exit {code}: {out[-500:]} {err[-1500:]}"}
    codes = [int(c) for c in res.get("codes", [])]
    wall = float(res.get("wall_s", 0.0))
    check = res.get("error", "")
    if not check and server.kind == "tus-peer":
        stored = server.data_dir / str(res["url"]).rstrip("/").rsplit("/", 1)[-1]
        got = await asyncio.to_thread(file_sha256, stored) if stored.exists() else "missing"
        check = "stored bytes ok" if got == digest else f"stored bytes WRONG ({got})"
    elif not check:
        file_id = str(res.get("content_location", "")).rstrip("/").rsplit("/", 1)[-1]
        async with client() as http:
            meta = await get_json(http, f"{server.base}/api/csv/files/{file_id}")
        good = meta.get("file_size") == size and meta.get("sha256") == digest
        check = "listed, size+sha256 ok" if good else f"WRONG: {meta}"
    ok = not res.get("error") and res.get("offset") == size and "ok" in check
    if not ok:
        print(f"  {server.label} failed: {check}\n{log_tail(server)}", flush=True)
    await h.stop(server)  # fresh process and data dir for every upload
    mb_s = size / wall / MB if ok and wall else 0.0
    return LargeRun(server.label, rnd, mb_s, wall, codes, check, ok, cpu)


# --------------------------------------------------------------------------- small


async def run_wrk_tus(
    h: Harness, s: Settings, server: Server, body: Path, metas: list[str], tag: str
) -> WrkResult:
    ids_out = body.parent / f"ids-{tag}.txt"
    env = {
        **os.environ,
        "BENCH_TUS_PATH": creation_path(server),
        "BENCH_BODY": str(body),
        "BENCH_METAS": ";".join(metas),
        "BENCH_IDS_OUT": str(ids_out),
    }
    cmd = ["wrk", "-t", str(min(s.wrk_threads, SMALL_CONNS)), "-c", str(SMALL_CONNS)]
    cmd += ["-d", f"{s.small_duration}s", "--timeout", "30s", "--latency", "-s", str(TUS_LUA)]
    cmd += [server.base + creation_path(server)]
    await settle()
    window = CpuWindow(server.proc.pid)
    window.start()
    code, out, err = await h.run(cmd, timeout=s.small_duration + 90, env=env)
    cpu = window.stop()
    line = next((x for x in out.splitlines() if x.startswith("BENCH_JSON ")), None)
    if code != 0 or line is None:
        raise BenchError(f"wrk failed (exit {code}):\n{out}\n{err}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    status = {str(k): int(v) for k, v in data["status"].items()}
    lat = data["latency_us"]
    return WrkResult(
        conns=SMALL_CONNS,
        seconds=data["duration_us"] / 1e6,
        ok=status.get("201", 0),
        status=status,
        issued=int(data["issued"]),
        responses=int(data["requests"]),
        socket_errors={k: int(v) for k, v in data["errors"].items()},
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        max_ms=lat["max"] / 1000,
        cpu=cpu,
        ids=ids_out.read_text().split() if ids_out.exists() else [],
    )


async def sample_bytes(server: Server, ids: list[str], want: bytes) -> tuple[int, int]:
    """(compared, equal): a random sample of csvstore's stored files, downloaded."""
    sample = random.sample(ids, min(SAMPLE, len(ids)))
    equal = 0
    async with client(limit=8) as http:
        for file_id in sample:
            async with http.get(f"{server.base}/api/csv/files/{file_id}/content") as resp:
                if resp.status == 200 and await resp.read() == want:
                    equal += 1
    return len(sample), equal


def peer_check(server: Server, res: WrkResult, want: bytes, before: set[str]) -> Check:
    """Every 201 of the peer names an upload whose file holds the bytes sent (all sizes
    checked, a sample compared byte for byte)."""
    files = {p.name for p in server.data_dir.iterdir() if p.suffix != ".json"} - before
    answered = set(res.ids)
    missing = len(answered - files) + (res.ok - len(answered))
    sizes_bad = sum(
        1 for i in answered & files if (server.data_dir / i).stat().st_size != len(want)
    )
    sample = random.sample(sorted(answered & files), min(SAMPLE, len(answered & files)))
    bad = sum(1 for i in sample if (server.data_dir / i).read_bytes() != want)
    in_flight = max(0, res.issued - res.responses)
    extra = len(files - answered)
    ok = missing == 0 and sizes_bad == 0 and bad == 0 and extra <= in_flight
    return Check(res.ok, len(files), missing + sizes_bad + bad, extra, in_flight, ok)


@dataclass
class SmallRound:
    round: int
    peer: WrkResult
    tus: WrkResult
    multipart: WrkResult
    peer_check: Check
    tus_check: Check
    tus_bytes: tuple[int, int]
    multipart_check: Check

    @property
    def noise(self) -> float:
        return max(r.cpu.noise_pct for r in (self.peer, self.tus, self.multipart))


async def scenario_small_tus(h: Harness, s: Settings, rep: Report, rounds: int) -> None:
    print(
        f"\n== tus small: 4 KiB CSV by creation-with-upload, c={SMALL_CONNS}, "
        f"{s.small_duration} s, wrk -t {s.wrk_threads}; csvstore multipart in the same round"
    )
    csv = csv_block(4 * KIB, with_header=True)
    work = h.tmp("tus-bodies")
    body = work / "data.csv"
    body.write_bytes(csv)
    peer = await start_peer(h)
    csvs = await h.start("csvstore")
    done: list[SmallRound] = []
    rnd = 0
    while True:
        rnd += 1
        sessions = [f"bench-tus-small-r{rnd}-{i}" for i in range(s.small_sessions)]
        mp_sessions = [f"bench-mp-small-r{rnd}-{i}" for i in range(s.small_sessions)]
        async with client() as http:
            for sid in sessions + mp_sessions:
                await create_session(http, csvs, sid)
        metas = [metadata(sid, "data.csv") for sid in sessions]
        before = {p.name for p in peer.data_dir.iterdir()} if peer.data_dir.exists() else set()
        res_peer = await run_wrk_tus(h, s, peer, body, metas, f"peer-r{rnd}")
        chk_peer = await asyncio.to_thread(peer_check, peer, res_peer, csv, before)
        res_tus = await run_wrk_tus(h, s, csvs, body, metas, f"csvstore-r{rnd}")
        chk_tus = await verify_recorded(csvs, sessions, res_tus)
        tus_bytes = await sample_bytes(csvs, res_tus.ids, csv)
        bodies = []
        for sid in mp_sessions:
            path = work / f"{sid}.body"
            path.write_bytes(multipart_body(sid, csv))
            bodies.append(path)
        res_mp = await run_wrk(h, s, csvs, SMALL_CONNS, bodies, f"mp-r{rnd}")
        chk_mp = await verify_recorded(csvs, mp_sessions, res_mp)
        one = SmallRound(rnd, res_peer, res_tus, res_mp, chk_peer, chk_tus, tus_bytes, chk_mp)
        done.append(one)
        for label, res, chk in (
            ("@tus/server tus", res_peer, chk_peer),
            ("csvstore tus", res_tus, chk_tus),
            ("csvstore multipart", res_mp, chk_mp),
        ):
            print(
                f"  round {rnd} {label:<19} {res.rate:7.0f} uploads/s  p50 {res.p50_ms:6.1f} ms  "
                f"p99 {res.p99_ms:6.1f} ms  status {res.status}  errors {res.errors}  "
                f"checked {chk.text()}  wrk CPU {res.cpu.pct(res.cpu.clients_s):.0f}%  "
                f"{res.cpu.text()}",
                flush=True,
            )
            rep.record("tus_small", round=rnd, server=label, **res.summary(), check=asdict(chk))
        print(
            f"  round {rnd} csvstore tus files equal byte for byte: {tus_bytes[1]}/{tus_bytes[0]}"
        )
        ratios = [r.tus.rate / r.peer.rate for r in done if r.peer.rate]
        if not more_rounds(s, [r.noise for r in done], rounds, ratios):
            break
        if rnd >= rounds:
            print(f"  (round {rnd}: other CPU {one.noise:.0f}%, {rounds_text(ratios)})")
    # Their files stay until the run's cleanup: see settle() in run.py on mass deletes.
    await h.stop(peer, remove_data=False)
    await h.stop(csvs, remove_data=False)

    kept = quiet(done, [r.noise for r in done])
    sc = "tus 4 KiB"
    base = "baseline col = @tus/server"
    for r in done:
        rep.add(
            Row(sc, f"round {r.round} uploads/s, c={SMALL_CONNS} (other CPU {r.noise:.0f}%)",
                r.peer.rate, r.tus.rate)
        )  # fmt: skip
    for r in done:
        rep.add(
            Row(sc, f"round {r.round} uploads/s, tus vs multipart (baseline col = multipart)",
                r.multipart.rate, r.tus.rate)
        )  # fmt: skip
    peer_med = statistics.median(r.peer.rate for r in kept)
    tus_med = statistics.median(r.tus.rate for r in kept)
    mp_med = statistics.median(r.multipart.rate for r in kept)
    which = f"median of {len(kept)} of {len(done)} rounds"
    rep.add(
        Row(sc, f"uploads/s, {which} ({base})", peer_med, tus_med, ">= 1.0x",
            tus_med >= peer_med)
    )  # fmt: skip
    rep.add(
        Row(sc, f"uploads/s vs own multipart, {which} (baseline col = multipart)", mp_med,
            tus_med, ">= 0.8x", tus_med >= 0.8 * mp_med)
    )  # fmt: skip
    for pct in ("p50_ms", "p99_ms"):
        rep.add(
            Row(sc, f"{pct[:3]} ms, {which}",
                statistics.median(getattr(r.peer, pct) for r in kept),
                statistics.median(getattr(r.tus, pct) for r in kept))
        )  # fmt: skip
    us = [(r.peer.server_us_per_upload, r.tus.server_us_per_upload) for r in kept]
    rep.add(
        Row(sc, "server CPU us/upload, median", statistics.median(u[0] for u in us),
            statistics.median(u[1] for u in us))
    )  # fmt: skip
    rep.add(
        Row(sc, "server CPU us/upload, csvstore multipart (baseline col = multipart)",
            statistics.median(r.multipart.server_us_per_upload for r in kept),
            statistics.median(r.tus.server_us_per_upload for r in kept))
    )  # fmt: skip
    errs = sum(r.peer.errors for r in done), sum(r.tus.errors + r.multipart.errors for r in done)
    rep.add(Row(sc, "errors (all rounds; csvstore: tus + multipart)", *errs, "0", errs == (0, 0)))
    rep.add(
        Row(sc, "201s checked, all rounds (peer: on disk; csvstore: listed, tus + multipart)",
            checked([r.peer_check for r in done], "on disk"),
            checked([c for r in done for c in (r.tus_check, r.multipart_check)], "listed"),
            "all",
            all(r.peer_check.ok and r.tus_check.ok and r.multipart_check.ok for r in done))
    )  # fmt: skip
    compared = sum(r.tus_bytes[0] for r in done)
    equal = sum(r.tus_bytes[1] for r in done)
    rep.add(
        Row(sc, "sample of stored files equal byte for byte", None, f"{equal}/{compared}",
            "all", equal == compared and compared > 0)
    )  # fmt: skip
    wrk_cpu = max(r.cpu.pct(r.cpu.clients_s) for x in done for r in (x.peer, x.tus, x.multipart))
    rep.add(
        Row(sc, "wrk CPU % of 1 core (max over runs: the client is not the limit)", None,
            wrk_cpu, "< 60", wrk_cpu < 60)
    )  # fmt: skip
    rep.add(
        Row(sc, "other processes' CPU % (noise), max over kept rounds", None,
            max(r.noise for r in kept), f"<= {NOISE_PERCENT:.0f}",
            max(r.noise for r in kept) <= NOISE_PERCENT)
    )  # fmt: skip


def checked(checks: list[Check], where: str) -> str:
    answered = sum(c.answered for c in checks)
    found = answered - sum(c.missing for c in checks)
    extra = sum(c.extra for c in checks)
    out = f"{found}/{answered} {where}"
    return out + (f", +{extra} completed after wrk hung up" if extra else "")


def more_rounds(
    s: Settings, noises: list[float], rounds: int, ratios: Sequence[float] = ()
) -> bool:
    if len(noises) < rounds:
        return True
    if s.quick or len(noises) >= rounds + EXTRA_ROUNDS:
        return False
    clean = sum(1 for n in noises if n <= NOISE_PERCENT)
    return clean < rounds or (len(ratios) % 2 == 0 and disagree(ratios))


def disagree(ratios: Sequence[float]) -> bool:
    """Whether the rounds' ratios are too far apart for a median of an even count."""
    low = min(ratios, default=0.0)
    return low > 0 and max(ratios) / low > DISAGREE


def rounds_text(ratios: Sequence[float]) -> str:
    shown = ", ".join(f"{r:.2f}" for r in ratios)
    return f"ratios so far {shown}: another round"


def quiet(done: list[T], noises: list[float]) -> list[T]:
    """The undisturbed rounds when at least ROUNDS were, else all of them."""
    clean = [r for r, n in zip(done, noises, strict=True) if n <= NOISE_PERCENT]
    return clean if len(clean) >= ROUNDS else done


async def scenario_large_tus(h: Harness, s: Settings, rep: Report, rounds: int) -> None:
    big = h.tmp("tus-files") / "big.csv"
    t0 = time.perf_counter()
    await asyncio.to_thread(write_big_csv, big, s.big_size)
    digest = await asyncio.to_thread(file_sha256, big)
    print(
        f"\n== tus large: wrote {size_label(s.big_size)} in {time.perf_counter() - t0:.1f} s; "
        f"one PATCH, then {CHUNK // MIB} MiB PATCHes; a fresh server for every upload",
        flush=True,
    )
    size = s.big_size
    for case, chunk in (
        (f"{size_label(size)} in one PATCH", 0),
        (f"{size_label(size)} in {CHUNK // MIB} MiB PATCHes", CHUNK),
    ):
        done: list[tuple[LargeRun, LargeRun]] = []
        while True:
            rnd = len(done) + 1
            pair = (
                await large_once(h, "peer", big, size, chunk, digest, rnd),
                await large_once(h, "csvstore", big, size, chunk, digest, rnd),
            )
            done.append(pair)
            for run in pair:
                print(
                    f"  {case:<24} round {rnd} {run.server:<12} {run.mb_s:6.0f} MB/s  wall "
                    f"{run.wall_s:6.2f} s  {len(run.codes)} answers  {run.check}  "
                    f"client CPU {run.cpu.pct(run.cpu.clients_s):.0f}%  {run.cpu.text()}",
                    flush=True,
                )
                rep.record("tus_large", case=case, size=size, chunk=chunk, **asdict(run))
            noises = [max(a.cpu.noise_pct, b.cpu.noise_pct) for a, b in done]
            ratios = [c.mb_s / p.mb_s for p, c in done if p.mb_s]
            if not more_rounds(s, noises, rounds, ratios):
                break
            if rnd >= rounds:
                print(f"  (round {rnd}: other CPU {noises[-1]:.0f}%, {rounds_text(ratios)})")
        sc = "tus large"
        for (p, c), n in zip(done, noises, strict=True):
            rep.add(Row(sc, f"{case} round {p.round} MB/s (other CPU {n:.0f}%)", p.mb_s, c.mb_s))
        kept = quiet(done, noises)
        pm = statistics.median(p.mb_s for p, _ in kept)
        cm = statistics.median(c.mb_s for _, c in kept)
        rep.add(
            Row(sc, f"{case} MB/s, median of {len(kept)} of {len(done)} rounds (baseline col = "
                "@tus/server)", pm, cm, ">= 1.0x", cm >= pm)
        )  # fmt: skip
        rep.add(
            Row(sc, f"{case} server CPU % of 1 core, median",
                statistics.median(p.cpu.pct(p.cpu.server_s) for p, _ in kept),
                statistics.median(c.cpu.pct(c.cpu.server_s) for _, c in kept))
        )  # fmt: skip
        client_cpu = max(r.cpu.pct(r.cpu.clients_s) for pair in done for r in pair)
        rep.add(Row(sc, f"{case} client CPU % of 1 core, max", None, client_cpu))
        ok = all(p.ok and c.ok for p, c in done)
        rep.add(
            Row(sc, f"{case} answers and stored bytes checked (sha256)",
                f"{sum(p.ok for p, _ in done)}/{len(done)} ok",
                f"{sum(c.ok for _, c in done)}/{len(done)} ok", "all", ok)
        )  # fmt: skip
        rep.add(
            Row(sc, f"{case} other processes' CPU % (noise), max over kept rounds", None,
                max(max(p.cpu.noise_pct, c.cpu.noise_pct) for p, c in kept),
                f"<= {NOISE_PERCENT:.0f}",
                max(max(p.cpu.noise_pct, c.cpu.noise_pct) for p, c in kept) <= NOISE_PERCENT)
        )  # fmt: skip
    big.unlink()


async def scenario_tus(h: Harness, s: Settings, rep: Report) -> None:
    print("\n== tus: csvstore's tus endpoint against @tus/server", flush=True)
    skip = await asyncio.to_thread(ensure_peer)
    if skip is not None:
        rep.note(skip)
        return
    versions = ", ".join(f"{k} {v}" for k, v in installed_pins().items())
    print(f"  peer: {versions} (FileStore: no fsync), node {node_version()}", flush=True)
    rep.record("tus_peer", versions=installed_pins(), node=node_version(), host=HOST)
    await scenario_large_tus(h, s, rep, ROUNDS)
    await scenario_small_tus(h, s, rep, ROUNDS)

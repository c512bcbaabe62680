"""The csvstore benchmark: csvstore against a bare aiohttp baseline, back to back.

Run from the repository root::

    python -m bench.run                 # full run (a few minutes)
    python -m bench.run --quick         # ~2 minutes, for use while developing
    python -m bench.run --only small    # one scenario (small, large, listing, tus, query)
    python -m bench.run --workers 2     # csvstore with --workers 2 (and the 1-process figure)
    python -m bench.run --ref HEAD~1    # csvstore as committed at a git ref (git archive)
    python -m bench.run --markdown      # also print the table as Markdown for RESULTS.md
    python -m bench.run --backend postgres-s3   # csvstore on PostgreSQL + S3 (SeaweedFS)

Scenarios (see bench/README.md): ``small`` (4 KiB uploads under wrk at 8/64/512
connections), ``large`` (1 x 1 GiB and 8 x 128 MiB with curl, MB/s and peak RSS) and
``listing`` (1,000 sessions x 10 files, then GET latencies) and ``tus`` (csvstore's tus
endpoint against @tus/server: bench/tus_scenarios.py). Every figure is printed with
the ratio csvstore/baseline and the target from issue 3; JSON lines go to
``bench/out/results-<timestamp>.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiohttp

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
LUA_SCRIPT = BENCH_DIR / "upload.lua"
OUT_DIR = BENCH_DIR / "out"
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
MB = 1_000_000  # throughput is in MB/s (10^6 bytes per second), sizes in MiB/GiB
SCENARIOS = ("small", "large", "listing", "tus", "query")
SERVER_START_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

Value = float | int | str | None


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    quick: bool
    small_levels: tuple[int, ...]
    small_duration: int  # seconds per wrk run
    small_sessions: int
    small_attempts: int  # measurements per level when other processes disturb them
    large_attempts: int
    wrk_threads: int
    big_size: int
    big_count: int  # parallel uploads of the big file (1)
    par_size: int
    par_count: int
    list_sessions: int
    list_files: int
    list_requests: int
    list_concurrency: int

    @classmethod
    def make(cls, quick: bool, wrk_threads: int) -> Settings:
        if quick:
            return cls(
                quick=True,
                small_levels=(8, 64),
                small_duration=3,
                small_sessions=4,
                small_attempts=1,
                large_attempts=1,
                wrk_threads=wrk_threads,
                big_size=128 * MIB,
                big_count=1,
                par_size=16 * MIB,
                par_count=8,
                list_sessions=100,
                list_files=10,
                list_requests=50,
                list_concurrency=32,
            )
        return cls(
            quick=False,
            small_levels=(8, 64, 512),
            small_duration=10,
            small_sessions=4,
            small_attempts=3,
            large_attempts=2,
            wrk_threads=wrk_threads,
            big_size=GIB,
            big_count=1,
            par_size=128 * MIB,
            par_count=8,
            list_sessions=1000,
            list_files=10,
            list_requests=200,
            list_concurrency=32,
        )


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One line of the summary table."""

    scenario: str
    metric: str
    baseline: Value
    csvstore: Value
    target: str = ""
    met: bool | None = None
    ratio: float | None = None

    def __post_init__(self) -> None:
        if (
            self.ratio is None
            and isinstance(self.baseline, int | float)
            and isinstance(self.csvstore, int | float)
            and self.baseline
        ):
            self.ratio = self.csvstore / self.baseline


class Report:
    """Collects rows, appends JSON lines as results come in, prints the table at the end."""

    def __init__(self, path: Path, tag: str = "") -> None:
        self.path = path
        self.tag = tag  # appended to every scenario name: which backend the run measured
        self.rows: list[Row] = []
        self.notes: list[str] = []
        path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, kind: str, **data: Any) -> None:
        line = {"type": kind, "time": now_iso(), **data}
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(line, default=str) + "\n")

    def add(self, row: Row) -> None:
        if self.tag:
            row.scenario = f"{row.scenario} [{self.tag}]"
        self.rows.append(row)
        self.record("row", **asdict(row))
        print(f"  -> {format_row_inline(row)}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.record("note", text=text)
        print(f"  note: {text}", flush=True)

    def table(self) -> str:
        head = ("scenario", "metric", "baseline", "csvstore", "ratio", "target", "met")
        body = [
            (
                r.scenario,
                r.metric,
                fmt(r.baseline),
                fmt(r.csvstore),
                "" if r.ratio is None else f"{r.ratio:.2f}",
                r.target,
                {True: "yes", False: "NO", None: ""}[r.met],
            )
            for r in self.rows
        ]
        widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
        lines = [
            " | ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)),
            "-+-".join("-" * w for w in widths),
        ]
        lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = [
            "| scenario | metric | baseline | csvstore | ratio | target | met |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in self.rows:
            ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
            met = {True: "yes", False: "**no**", None: ""}[r.met]
            cells = (r.scenario, r.metric, fmt(r.baseline), fmt(r.csvstore), ratio, r.target, met)
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines)


def fmt(v: Value) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def format_row_inline(r: Row) -> str:
    ratio = "" if r.ratio is None else f" ratio {r.ratio:.2f}"
    met = {True: " [met]", False: " [NOT met]", None: ""}[r.met]
    target = f" target {r.target}" if r.target else ""
    return (
        f"{r.scenario}: {r.metric}: baseline {fmt(r.baseline)}, csvstore {fmt(r.csvstore)}"
        f"{ratio}{target}{met}"
    )


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


# --------------------------------------------------------------------------- machine info


def machine_info() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = run_text(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = run_text(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "csvstore", "sql", "pyproject.toml"]
    )
    wrk = shutil.which("wrk")
    return {
        "date": now_iso(),
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "wrk": run_text(["wrk", "--version"]).split(" Copyright")[0].strip() if wrk else "missing",
        "commit": commit.strip() + (" + uncommitted changes" if dirty.strip() else ""),
        "memory": mem_total(),
    }


def mem_total() -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / MIB:.1f} GiB"
    return "unknown"


def run_text(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    print("wrk not found: installing Debian's wrk with apt-get", flush=True)
    if os.geteuid() != 0:
        raise SystemExit("wrk is missing and we are not root: run `sudo apt-get install -y wrk`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(cmd, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(cmd, env=env, check=True)
    path = shutil.which("wrk")
    if not path:
        raise SystemExit("could not install wrk")
    return path


# --------------------------------------------------------------------------- /proc helpers


def tree_pids(root: int) -> list[int]:
    """The root process and all its descendants (workers, if any)."""
    seen: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.append(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            with contextlib.suppress(OSError, ValueError):
                text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
                stack.extend(int(x) for x in text.split())
    return seen


def status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def tree_kib(root: int, key: str) -> int:
    return sum(status_kib(pid, key) for pid in tree_pids(root))


def tree_cpu_seconds(root: int) -> float:
    total = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


PF_KTHREAD = 0x00200000
KERNEL = "[kernel threads]"


def all_cpu_seconds() -> dict[int, tuple[str, float]]:
    """{pid: (command name, CPU seconds so far)} for every process on the machine.

    Kernel threads (writeback, block I/O completion: mostly work the servers' own I/O
    causes) are all named KERNEL.
    """
    out: dict[int, tuple[str, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = Path(f"/proc/{name}/stat").read_text()
            comm = text[text.index("(") + 1 : text.rindex(")")]
            fields = text.rsplit(")", 1)[1].split()
            if int(fields[6]) & PF_KTHREAD:
                comm = KERNEL
            out[int(name)] = (comm, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def top_others(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    exclude: set[int],
    exclude_names: frozenset[str],
) -> dict[str, float]:
    """CPU seconds used between two snapshots by processes not excluded, by command name."""
    by_name: dict[str, float] = {}
    for pid, (comm, cpu) in after.items():
        if pid in exclude or comm in exclude_names:
            continue
        used = cpu - before.get(pid, (comm, 0.0))[1]
        if used > 0:
            by_name[comm] = by_name.get(comm, 0.0) + used
    return dict(sorted(by_name.items(), key=lambda kv: -kv[1]))


def steal_cpu_seconds() -> float:
    """CPU seconds the hypervisor gave to someone else while this machine wanted them."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[8]) / CLK_TCK
    return 0.0


def busy_cpu_seconds() -> float:
    """CPU seconds that processes (all of them, all cores) have run since boot.

    user + nice + system: interrupt time (disk and network completions, which the
    servers' own I/O causes) and steal are left out, as they are in per-process times.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (fields[0] + fields[1] + fields[2]) / CLK_TCK  # guest time is already in user
    return 0.0


def self_cpu_seconds(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


@dataclass
class CpuUse:
    """Where the CPU went during one measurement (seconds, summed over both cores)."""

    wall_s: float
    server_s: float  # the server's process tree
    clients_s: float  # wrk, curl: the client processes this run started and reaped
    kernel_s: float  # kernel threads: writeback, I/O completion (mostly the servers' doing)
    other_s: float  # everything else: must be ~0 for a clean figure
    other_top: dict[str, float]  # the biggest of those, by command name
    steal_s: float  # time the hypervisor ran other machines on our cores
    services_s: float = 0.0  # --backend postgres-s3: PostgreSQL and SeaweedFS (csvstore's)

    def pct(self, seconds: float) -> float:
        return 100 * seconds / self.wall_s if self.wall_s else 0.0

    @property
    def noise_pct(self) -> float:
        return self.pct(self.other_s)

    def text(self) -> str:
        out = f"server CPU {self.pct(self.server_s):.0f}%"
        if self.services_s:
            out += f"  PostgreSQL+SeaweedFS CPU {self.pct(self.services_s):.0f}%"
        out += f"  clients CPU {self.pct(self.clients_s):.0f}%"
        out += f"  kernel threads {self.pct(self.kernel_s):.0f}%"
        out += f"  other CPU {self.noise_pct:.0f}%"
        if self.noise_pct > NOISE_PERCENT:
            out += f" {self.other_top}"
        if self.pct(self.steal_s) >= 5:
            out += f"  steal {self.pct(self.steal_s):.0f}%"
        return out


class CpuWindow:
    """Measures CpuUse between start() and stop() for one server."""

    CLIENTS = frozenset({"wrk", "curl", "dd"})
    # --backend postgres-s3: the PostgreSQL and SeaweedFS servers the run started. Their CPU
    # is csvstore's work, not noise: counted apart (CpuUse.services_s).
    service_pids: ClassVar[list[int]] = []

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.server0 = tree_cpu_seconds(self.pid)
        self.busy0 = busy_cpu_seconds()
        self.steal0 = steal_cpu_seconds()
        self.self0 = self_cpu_seconds(resource.RUSAGE_SELF)
        self.children0 = self_cpu_seconds(resource.RUSAGE_CHILDREN)
        self.procs0 = all_cpu_seconds()
        self.services0 = self.services_cpu()

    def services_cpu(self) -> float:
        return sum(tree_cpu_seconds(pid) for pid in self.service_pids)

    def stop(self) -> CpuUse:
        wall = time.perf_counter() - self.t0
        server = tree_cpu_seconds(self.pid) - self.server0
        busy = busy_cpu_seconds() - self.busy0
        own = self_cpu_seconds(resource.RUSAGE_SELF) - self.self0
        clients = self_cpu_seconds(resource.RUSAGE_CHILDREN) - self.children0
        services = self.services_cpu() - self.services0
        exclude = {*tree_pids(self.pid), os.getpid()}
        for pid in self.service_pids:
            exclude.update(tree_pids(pid))
        top = top_others(self.procs0, all_cpu_seconds(), exclude, self.CLIENTS)
        kernel = top.pop(KERNEL, 0.0)
        return CpuUse(
            wall_s=wall,
            server_s=server,
            clients_s=clients,
            kernel_s=kernel,
            other_s=max(0.0, busy - server - clients - own - kernel - services),
            other_top={k: round(v, 2) for k, v in list(top.items())[:4]},
            steal_s=steal_cpu_seconds() - self.steal0,
            services_s=services,
        )


# --------------------------------------------------------------------------- the disk
#
# On an ext4 without a journal (as on the benchmark machine), the inode allocator skips
# every inode deleted less than 60 s ago (360 s while its inode table block is still
# dirty), scanning them one by one: after tens of thousands of deletes, creating a file
# costs 0.5-1.5 ms of kernel time instead of ~50 us, and small-upload figures collapse.
# So the benchmark never mass-deletes between measurements (only the few large files),
# syncs after removing its temp folder, and probes file creation before it starts.

# The same effect makes a server's figures depend on what was deleted near its folder.
# Marking the temp folder as a "top directory" for ext4's Orlov allocator (chattr +T) puts
# each folder created in it (one per server) in a fresh block group, away from inodes
# deleted by a previous run, by tests or by anything else in /tmp.

SLOW_CREATE_US = 250.0


def spread_subdirs(path: Path) -> bool:
    """chattr +T: subfolders go to fresh ext4 block groups. False where not supported."""
    if not shutil.which("chattr"):
        return False
    done = subprocess.run(["chattr", "+T", str(path)], capture_output=True, check=False)
    return done.returncode == 0


async def settle() -> None:
    """Flush dirty pages before a measurement so the last one's writeback stays out of it."""
    await asyncio.to_thread(os.sync)


def probe_create_us(directory: Path, n: int = 300) -> float:
    """Microseconds to create and write one 4 KiB file in `directory` (kept until cleanup)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = b"x" * (4 * KIB)
    t0 = time.perf_counter()
    for _ in range(n):
        with (directory / f"{uuid.uuid4().hex}.csv").open("wb") as out:
            out.write(data)
    return (time.perf_counter() - t0) / n * 1e6


async def check_disk(h: Harness, s: Settings, rep: Report) -> None:
    max_wait = 0 if s.quick else 400
    waited = 0
    us = probe_create_us(h.tmp("probe"))
    while us > SLOW_CREATE_US and waited < max_wait:
        print(
            f"disk: creating a file takes {us:.0f} us (> {SLOW_CREATE_US:.0f}): many inodes "
            f"were deleted recently; waiting for the disk to settle ({waited} s so far)",
            flush=True,
        )
        await asyncio.sleep(10)
        waited += 10
        us = probe_create_us(h.tmp("probe"))
    print(f"disk: creating a 4 KiB file takes {us:.0f} us (waited {waited} s)", flush=True)
    rep.record("disk_probe", create_us=us, waited_s=waited)
    if us > SLOW_CREATE_US:
        rep.note(
            f"file creation on this disk was slow at the start ({us:.0f} us per file): "
            "files were mass-deleted in the last minutes (e.g. by a previous run), and the "
            "small-upload figures are depressed for both servers; rerun a few minutes later"
        )


NOISE_PERCENT = 10.0  # other processes' CPU during a measurement above which it is redone
BUSY_PERCENT = 20.0  # other processes' CPU, % of one core, above which figures are noisy


async def machine_busy_percent(seconds: float = 2.0) -> float:
    """CPU used by everything on the machine over a short window, % of one core."""
    busy0 = busy_cpu_seconds()
    await asyncio.sleep(seconds)
    return 100 * (busy_cpu_seconds() - busy0) / seconds


async def check_quiet(s: Settings, rep: Report) -> None:
    max_wait = 0 if s.quick else 180
    waited = 0
    busy = await machine_busy_percent()
    while busy > BUSY_PERCENT and waited < max_wait:
        print(
            f"machine: other processes use {busy:.0f}% of a core; waiting for quiet "
            f"({waited} s so far, at most {max_wait} s)",
            flush=True,
        )
        await asyncio.sleep(8)
        waited += 10
        busy = await machine_busy_percent()
    print(f"machine: {busy:.0f}% of a core busy before the start (waited {waited} s)")
    rep.record("busy_probe", busy_percent=busy, waited_s=waited)
    if busy > BUSY_PERCENT:
        rep.note(
            f"the machine was busy at the start ({busy:.0f}% of a core used by other "
            "processes): see the noise rows; figures taken under load are not comparable"
        )


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    label: str  # "baseline", "csvstore", "csvstore --workers 2"
    kind: str  # "baseline" or "csvstore"
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path
    stopped: bool = False

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def success(self) -> int:
        return 200 if self.kind == "baseline" else 201


BACKENDS = ("sqlite", "postgres-s3")
PG_SCRIPT = REPO / "scripts" / "pg-test-cluster"
S3_SCRIPT = REPO / "scripts" / "s3-test-server"


def pg_tool(name: str) -> str:
    """A PostgreSQL client program: the newest /usr/lib/postgresql/*/bin one, else PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda x: int(x.parts[-3]) if x.parts[-3].isdigit() else 0,
    )
    return str(found[-1]) if found else shutil.which(name) or name


class PostgresS3:
    """--backend postgres-s3: a throwaway PostgreSQL (durable: fsync on) and SeaweedFS.

    Started with scripts/pg-test-cluster and scripts/s3-test-server in folders under the
    run's temp folder; every csvstore gets a database and a key prefix of its own (as it
    gets a data dir of its own with SQLite). stop() stops both; the caller removes the folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pg_dir = root / "pg"
        self.s3_dir = root / "s3"
        self.url = ""  # postgresql://postgres@127.0.0.1:PORT/csvstore
        self.s3: dict[str, str] = {}  # S3_ENDPOINT_URL, S3_BUCKET, AWS_ACCESS_KEY_ID, ...
        self.versions = ""

    def start(self) -> None:
        os.chmod(self.root, 0o755)  # the postgres user must reach pg/ (mkdtemp makes 0700)
        os.chmod(self.root.parent, 0o755)
        parent = self.root.parent.parent
        while parent != parent.parent:
            if not os.stat(parent).st_mode & 0o001:
                raise BenchError(f"{parent} is not searchable by the postgres user")
            parent = parent.parent
        t0 = time.monotonic()
        done = subprocess.run(
            [str(PG_SCRIPT), "start", str(self.pg_dir)],  # not --fast: fsync stays on
            capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if done.returncode != 0:
            raise BenchError(f"pg-test-cluster start failed:\n{done.stderr[-2000:]}")
        self.url = done.stdout.strip().splitlines()[-1]
        env = {**os.environ, "PY": sys.executable}
        done = subprocess.run(
            [str(S3_SCRIPT), "start", str(self.s3_dir), "csvstore-bench"],
            capture_output=True, text=True, check=False, env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if done.returncode != 0:
            raise BenchError(f"s3-test-server start failed:\n{done.stderr[-2000:]}")
        for line in done.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                self.s3[key.strip()] = value.strip()
        missing = {"S3_ENDPOINT_URL", "S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        missing -= set(self.s3)
        if missing:
            raise BenchError(f"s3-test-server printed no {', '.join(sorted(missing))}")
        self.ensure_bucket()
        CpuWindow.service_pids = self.pids()
        pg_version = run_text([pg_tool("postgres"), "--version"]).strip()
        weed = Path(sys.executable).parent / "weed"
        weed_version = run_text([str(weed) if weed.exists() else "weed", "version"])
        weed_version = weed_version.strip().splitlines()[0] if weed_version.strip() else "?"
        self.versions = f"{pg_version} (fsync on), SeaweedFS {weed_version}"
        print(
            f"backend: PostgreSQL at {self.url}, SeaweedFS S3 at "
            f"{self.s3['S3_ENDPOINT_URL']} bucket {self.s3['S3_BUCKET']} "
            f"(started in {time.monotonic() - t0:.1f} s)",
            flush=True,
        )

    def ensure_bucket(self) -> None:
        """s3-test-server creates the bucket; create it here if it ever does not."""
        import botocore.session

        s3: Any = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.s3["S3_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id=self.s3["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.s3["AWS_SECRET_ACCESS_KEY"],
        )
        try:
            s3.head_bucket(Bucket=self.s3["S3_BUCKET"])
        except Exception:
            s3.create_bucket(Bucket=self.s3["S3_BUCKET"])

    def pids(self) -> list[int]:
        out: list[int] = []
        for pid_file in (self.pg_dir / "data" / "postmaster.pid", self.s3_dir / "pid"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                out.append(int(pid_file.read_text().split()[0]))
        return out

    def new_database(self, name: str) -> str:
        """CREATE DATABASE name; its URL."""
        base, _, _db = self.url.rpartition("/")
        port = base.rpartition(":")[2]
        cmd = [pg_tool("psql"), "-q", "-h", HOST, "-p", port, "-U", "postgres", "-d", "postgres"]
        done = subprocess.run(
            [*cmd, "-c", f'CREATE DATABASE "{name}"'],
            capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if done.returncode != 0:
            raise BenchError(f"CREATE DATABASE {name}: {done.stderr.strip()}")
        return f"{base}/{name}"

    def csvstore_args(self, name: str) -> list[str]:
        return [
            "--database-url",
            self.new_database(name),
            "--storage",
            f"s3://{self.s3['S3_BUCKET']}/{name}",
            "--s3-endpoint-url",
            self.s3["S3_ENDPOINT_URL"],
        ]

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.s3["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": self.s3["AWS_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def stop(self) -> None:
        CpuWindow.service_pids = []
        for script, path in ((S3_SCRIPT, self.s3_dir), (PG_SCRIPT, self.pg_dir)):
            if not path.exists():
                continue
            done = subprocess.run(
                [str(script), "stop", str(path)],
                capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
                env={**os.environ, "PY": sys.executable},
                start_new_session=True,  # a second Ctrl-C must not cut the stop short
            )  # fmt: skip
            if done.returncode != 0:
                print(f"  warning: {script.name} stop: {done.stderr.strip()}", flush=True)


class Harness:
    """Owns the temp folder and every process the benchmark starts."""

    def __init__(
        self, target_cmd: str | None, workers: int | None, backend: str = "sqlite"
    ) -> None:
        self.target_cmd = target_cmd
        self.workers = workers
        self.root = Path(tempfile.mkdtemp(prefix="csvstore-bench-", dir=tmp_parent()))
        self.topdir = spread_subdirs(self.root)
        self.backend = backend
        self.services: PostgresS3 | None = None
        self.src: Path | None = None  # csvstore's source tree when not the working tree
        self.servers: list[Server] = []
        self.children: list[asyncio.subprocess.Process] = []
        self._n = 0
        self._help: str | None = None

    def checkout(self, ref: str) -> str:
        """Run csvstore from `git archive REF` instead of the working tree; its commit."""
        sha = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--verify", "--short", f"{ref}^{{commit}}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if sha.returncode != 0:
            raise BenchError(f"--ref {ref}: not a commit: {sha.stderr.strip()}")
        self.src = self.tmp("src")
        archive = subprocess.Popen(
            ["git", "-C", str(REPO), "archive", "--format=tar", ref], stdout=subprocess.PIPE
        )
        subprocess.run(["tar", "-x", "-C", str(self.src)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise BenchError(f"git archive {ref} failed")
        if (self.src / "setup.py").exists():
            # Its C counter too, or the ref would count with the pure-Python one (~3x the CPU).
            build = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
            subprocess.run(build, cwd=self.src, capture_output=True, check=False, timeout=300)
        return sha.stdout.strip()

    async def start_services(self) -> None:
        """--backend postgres-s3: start PostgreSQL and SeaweedFS (stopped by cleanup())."""
        if self.backend == "sqlite" or self.services is not None:
            return
        self.services = PostgresS3(self.tmp("services"))
        await asyncio.to_thread(self.services.start)

    def csvstore_help(self) -> str:
        if self._help is None:
            done = subprocess.run(
                [sys.executable, "-m", "csvstore", "--help"],
                cwd=self.src or REPO,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            self._help = done.stdout
        return self._help

    def tmp(self, name: str) -> Path:
        self._n += 1
        path = self.root / f"{self._n:03d}-{name}"
        path.mkdir(parents=True)
        return path

    async def start(self, kind: str, workers: int | None = None) -> Server:
        port = free_port()
        work = self.tmp(kind + (f"-w{workers}" if workers else ""))
        data_dir = work / "data"
        log_path = work / "server.log"
        if kind == "baseline":
            cmd = [sys.executable, "-m", "bench.baseline_server", "--host", HOST]
            cmd += ["--port", str(port), "--dir", str(data_dir)]
        elif self.target_cmd:
            cmd = shlex.split(
                self.target_cmd.format(
                    python=sys.executable, host=HOST, port=port, dir=str(data_dir)
                )
            )
        else:
            cmd = [sys.executable, "-m", "csvstore", "--host", HOST, "--port", str(port)]
            cmd += ["--data-dir", str(data_dir)]
            if kind == "csvstore-raw":  # issue 4: the cost of hashing and profiling
                cmd += ["--analyse-uploads", "false"]
            if not workers and "--workers" in self.csvstore_help():
                cmd += ["--workers", "1"]  # "one server process", whatever the default
        if workers:
            cmd += ["--workers", str(workers)]
        label = kind + (f" --workers {workers}" if workers else "")
        # Measure the defaults: no CSVSTORE_* setting from the caller's environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CSVSTORE_")}
        if kind.startswith("csvstore") and not self.target_cmd and self.services is not None:
            name = f"bench_{work.name.replace('-', '_')}"  # a database and prefix of its own
            cmd += await asyncio.to_thread(self.services.csvstore_args, name)
            env.update(self.services.env())
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=self.src if self.src and kind.startswith("csvstore") else REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: workers die with it
            )
        server = Server(label, kind, proc, port, data_dir, log_path)
        self.servers.append(server)
        await wait_ready(server)
        return server

    async def stop(self, server: Server, remove_data: bool = True) -> None:
        if not server.stopped:
            await asyncio.to_thread(kill_group, server.proc)
            server.stopped = True
        if remove_data:
            shutil.rmtree(server.data_dir, ignore_errors=True)

    def cleanup(self) -> None:
        for child in self.children:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
        for server in self.servers:
            if not server.stopped:
                kill_group(server.proc)
                server.stopped = True
        if self.services is not None:
            self.services.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        os.sync()  # deleted inodes stay "recent" 60 s once written back, 360 s until then

    async def run(
        self, cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        """Run a client command (wrk, curl, dd); kill it if we are cancelled or time out."""
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.children.append(proc)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        finally:
            if proc.returncode is not None:
                self.children.remove(proc)
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def tmp_parent() -> str | None:
    """A temp folder on the same disk as the repository (so `dd` and uploads compare)."""
    default = tempfile.gettempdir()
    try:
        same = os.stat(default).st_dev == os.stat(REPO).st_dev
    except OSError:
        same = False
    if same:
        return None
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    return str(OUT_DIR)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # orphaned workers, if any
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        print(f"  warning: pid {proc.pid} ignored SIGTERM for 10 s; SIGKILL", flush=True)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def log_tail(server: Server, n: int = 25) -> str:
    try:
        lines = server.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    | " + line for line in lines[-n:])


class BenchError(Exception):
    pass


async def wait_ready(server: Server) -> None:
    url = f"{server.base}/api/csv/sessions?limit=1"
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while True:
            code = server.proc.poll()
            if code is not None:
                raise BenchError(
                    f"{server.label} exited with code {code} before answering "
                    f"GET /api/csv/sessions?limit=1:\n{log_tail(server)}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url) as resp:
                    await resp.read()
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{server.label} did not answer 200 within {SERVER_START_TIMEOUT:.0f} s:\n"
                    f"{log_tail(server)}"
                )
            await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- API helpers


def client(limit: int = 100, total: float = 60) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        timeout=aiohttp.ClientTimeout(total=total),
    )


async def create_session(http: aiohttp.ClientSession, server: Server, sid: str) -> None:
    async with http.post(f"{server.base}/api/csv/sessions", json={"session_id": sid}) as resp:
        body = await resp.text()
        if resp.status != 201:
            raise BenchError(f"{server.label}: POST /api/csv/sessions {sid!r} -> {resp.status}")
        del body


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise BenchError(f"GET {url} -> {resp.status}: {body[:300]!r}")
        return json.loads(body)


async def session_file_ids(http: aiohttp.ClientSession, server: Server, sid: str) -> list[str]:
    data = await get_json(http, f"{server.base}/api/csv/sessions/{sid}")
    return [str(f["id"]) for f in data["csv_files"]]


async def gather_limited(n: int, jobs: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Run the jobs with at most n at a time; the first failure cancels the rest."""
    queue = list(reversed(jobs))

    async def worker() -> None:
        while queue:
            await queue.pop()()

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(n, len(jobs))):
                tg.create_task(worker())
    except ExceptionGroup as group:
        first = group.exceptions[0]
        if isinstance(first, BenchError | aiohttp.ClientError | TimeoutError):
            raise BenchError(f"{type(first).__name__}: {first}") from group
        raise


# --------------------------------------------------------------------------- data


CSV_HEADER = b"id,name,email,city,amount,created_at,note\n"
CITIES = (b"Lisbon", b"Oslo", b"Quito", b"Accra", b"Hanoi", b"Perth", b"Lima", b"Turin")


def csv_rows(start: int) -> Iterator[bytes]:
    i = start
    while True:
        city = CITIES[i % len(CITIES)]
        yield (
            b"%d,user %d,user%d@example.com,%s,%d.%02d,2024-01-%02dT12:00:00Z,ok\n"
            % (i, i, i, city, (i * 37) % 10000, i % 100, 1 + i % 28)
        )
        i += 1


def csv_block(size: int, with_header: bool, start: int = 1) -> bytes:
    """CSV text of exactly `size` bytes ending in a newline (rows of 7 columns)."""
    out = bytearray(CSV_HEADER if with_header else b"")
    rows = csv_rows(start)
    filler = b"0,filler,filler@example.com,Nowhere,0.00,2024-01-01T00:00:00Z,\n"
    while True:
        row = next(rows)
        if len(out) + len(row) + len(filler) > size:
            break
        out += row
    pad = size - len(out) - len(filler)
    out += filler[:-1] + b"x" * pad + b"\n"
    assert len(out) == size
    return bytes(out)


def write_big_csv(path: Path, size: int) -> None:
    """A CSV file of `size` bytes: a 1 MiB block of rows, repeated."""
    block = min(size, MIB)
    first = csv_block(block, with_header=True)
    rest = csv_block(block, with_header=False, start=50_000)
    with path.open("wb") as out:
        out.write(first)
        written = block
        while written + block <= size:
            out.write(rest)
            written += block
        if written < size:
            out.write(csv_block(size - written, with_header=False, start=90_000))


BOUNDARY = "----csvstorebench" + "7MA4YWxkTrZu0gW"


def multipart_body(session_id: str, csv: bytes) -> bytes:
    b = BOUNDARY.encode()
    return b"".join(
        [
            b"--" + b + b"\r\n",
            b'Content-Disposition: form-data; name="session_id"\r\n\r\n',
            session_id.encode() + b"\r\n",
            b"--" + b + b"\r\n",
            b'Content-Disposition: form-data; name="file"; filename="data.csv"\r\n',
            b"Content-Type: text/csv\r\n\r\n",
            csv,
            b"\r\n--" + b + b"--\r\n",
        ]
    )


# --------------------------------------------------------------------------- scenario: small


@dataclass
class WrkResult:
    conns: int
    seconds: float
    ok: int  # answers with the server's success status
    status: dict[str, int]
    issued: int
    responses: int
    socket_errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu: CpuUse
    ids: list[str] = field(repr=False)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds

    @property
    def server_us_per_upload(self) -> float:
        return self.cpu.server_s / max(self.ok, 1) * 1e6

    @property
    def errors(self) -> int:
        non_2xx = sum(n for s, n in self.status.items() if not s.startswith("2"))
        sock = sum(v for k, v in self.socket_errors.items() if k != "status")
        return non_2xx + sock

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        del d["ids"]
        d["uploads_per_s"] = self.rate
        d["errors_total"] = self.errors
        return d


async def run_wrk(
    h: Harness, s: Settings, server: Server, conns: int, bodies: list[Path], tag: str
) -> WrkResult:
    ids_out = bodies[0].parent / f"ids-{tag}.txt"
    env = {
        **os.environ,
        "BENCH_BODIES": ",".join(str(p) for p in bodies),
        "BENCH_BOUNDARY": BOUNDARY,
        "BENCH_IDS_OUT": str(ids_out),
    }
    threads = max(1, min(s.wrk_threads, conns))
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{s.small_duration}s"]
    cmd += ["--timeout", "30s", "--latency", "-s", str(LUA_SCRIPT)]
    cmd += [f"{server.base}/api/csv/upload"]
    await settle()
    window = CpuWindow(server.proc.pid)
    window.start()
    code, out, err = await h.run(cmd, timeout=s.small_duration + 90, env=env)
    cpu = window.stop()
    line = next((x for x in out.splitlines() if x.startswith("BENCH_JSON ")), None)
    if code != 0 or line is None:
        raise BenchError(f"wrk failed (exit {code}):\n{out}\n{err}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    ids = ids_out.read_text().split() if ids_out.exists() else []
    status = {str(k): int(v) for k, v in data["status"].items()}
    lat = data["latency_us"]
    return WrkResult(
        conns=conns,
        seconds=data["duration_us"] / 1e6,
        ok=status.get(str(server.success), 0),
        status=status,
        issued=int(data["issued"]),
        responses=int(data["requests"]),
        socket_errors={k: int(v) for k, v in data["errors"].items()},
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        max_ms=lat["max"] / 1000,
        cpu=cpu,
        ids=ids,
    )


@dataclass
class Check:
    answered: int
    recorded: int
    missing: int
    extra: int
    in_flight: int
    ok: bool

    def text(self) -> str:
        s = f"{self.answered - self.missing}/{self.answered} listed"
        if self.missing:
            s += f" ({self.missing} MISSING)"
        if self.extra:
            s += f", +{self.extra} unanswered (<= {self.in_flight} in flight at stop)"
        return s


async def verify_recorded(server: Server, sessions: list[str], res: WrkResult) -> Check:
    """Every upload answered 201 must be listed in its session (by file id)."""
    async with client() as http:
        prev = -1
        recorded: set[str] = set()
        deadline = time.monotonic() + 15
        while True:  # uploads in flight when wrk stopped may still be committing
            recorded = set()
            for sid in sessions:
                recorded.update(await session_file_ids(http, server, sid))
            if len(recorded) == prev or time.monotonic() > deadline:
                break
            prev = len(recorded)
            await asyncio.sleep(0.5)
    answered = set(res.ids)
    missing = len(answered - recorded) + (res.ok - len(answered))  # 201 without an id
    extra = len(recorded - answered)
    in_flight = max(0, res.issued - res.responses)
    ok = missing == 0 and len(res.ids) == res.ok and extra <= in_flight
    return Check(res.ok, len(recorded), missing, extra, in_flight, ok)


async def scenario_small(h: Harness, s: Settings, rep: Report) -> None:
    print(f"\n== small: 4 KiB CSV, {s.small_duration} s per level, wrk -t {s.wrk_threads}")
    csv = csv_block(4 * KIB, with_header=True)
    servers = [await h.start("baseline"), await h.start("csvstore")]
    if h.workers:
        servers.append(await h.start("csvstore", workers=h.workers))
    bodies_dir = h.tmp("bodies")
    results: dict[tuple[str, int], WrkResult] = {}
    checks: dict[tuple[str, int], Check] = {}

    async def measure(server: Server, conns: int, tag: str) -> tuple[WrkResult, Check | None]:
        sessions = [f"bench-small-{tag}-{i}" for i in range(s.small_sessions)]
        async with client() as http:
            for sid in sessions:
                await create_session(http, server, sid)
        bodies = []
        for sid in sessions:
            path = bodies_dir / f"{sid}.body"
            path.write_bytes(multipart_body(sid, csv))
            bodies.append(path)
        res = await run_wrk(h, s, server, conns, bodies, tag)
        chk = await verify_recorded(server, sessions, res) if server.kind == "csvstore" else None
        print(
            f"  {server.label:<22} c={conns:<4} {res.rate:8.0f} uploads/s  "
            f"p50 {res.p50_ms:7.1f} ms  p99 {res.p99_ms:7.1f} ms  errors {res.errors}  "
            f"status {res.status}  {res.cpu.text()}" + (f"  recorded {chk.text()}" if chk else ""),
            flush=True,
        )
        procs = len(tree_pids(server.proc.pid))
        extra: dict[str, Any] = {"check": asdict(chk)} if chk else {}
        rep.record("small", server=server.label, tag=tag, processes=procs, **res.summary(), **extra)
        return res, chk

    for conns in s.small_levels:
        for server in servers:
            slug = server.label.replace(" ", "").replace("-", "")
            best: tuple[WrkResult, Check | None] | None = None
            failed_check: Check | None = None
            for attempt in range(1, s.small_attempts + 1):
                res, chk = await measure(server, conns, f"c{conns}-{slug}-a{attempt}")
                if chk is not None and not chk.ok:
                    failed_check = chk  # lost data is reported whichever attempt is kept
                if best is None or res.cpu.noise_pct < best[0].cpu.noise_pct:
                    best = (res, chk)
                noise = res.cpu.noise_pct
                if noise <= NOISE_PERCENT:
                    break
                if attempt < s.small_attempts:
                    print(f"  (other processes used {noise:.0f}% of a core: measuring again)")
            assert best is not None
            results[(server.label, conns)] = best[0]
            kept = failed_check or best[1]
            if kept is not None:
                checks[(server.label, conns)] = kept
            # No deletes between runs: see settle() for why mass deletes poison the disk.
    for server in servers:
        await h.stop(server)

    # ---- rows
    for conns in s.small_levels:
        base = results[("baseline", conns)]
        for label in [sv.label for sv in servers if sv.kind == "csvstore"]:
            res = results[(label, conns)]
            sc = "small" if label == "csvstore" else f"small ({label})"
            target_rate = ""
            met_rate: bool | None = None
            if conns in (8, 64) and label == "csvstore":
                target_rate = ">= 0.8x"
                met_rate = res.rate >= 0.8 * base.rate
            rep.add(Row(sc, f"c={conns} uploads/s", base.rate, res.rate, target_rate, met_rate))
            rep.add(Row(sc, f"c={conns} p50 ms", base.p50_ms, res.p50_ms))
            if conns == 64 and label == "csvstore":
                rep.add(
                    Row(sc, f"c={conns} p99 ms", base.p99_ms, res.p99_ms, "<= 2x",
                        res.p99_ms <= 2 * base.p99_ms)
                )  # fmt: skip
            else:
                rep.add(Row(sc, f"c={conns} p99 ms", base.p99_ms, res.p99_ms))
            rep.add(Row(sc, f"c={conns} errors", base.errors, res.errors, "0", res.errors == 0))
            found = checks.get((label, conns))
            if found is not None:
                rep.add(
                    Row(sc, f"c={conns} 201s recorded (API)", None, found.text(), "all", found.ok)
                )
            b_us = base.server_us_per_upload
            c_us = res.server_us_per_upload
            rep.add(Row(sc, f"c={conns} server CPU us/upload", b_us, c_us))
            if h.services is not None:  # csvstore's share of PostgreSQL's and SeaweedFS's CPU
                svc_us = res.cpu.services_s / max(res.ok, 1) * 1e6
                rep.add(Row(sc, f"c={conns} PostgreSQL+SeaweedFS CPU us/upload", None, svc_us))
            rep.add(
                Row(sc, f"c={conns} wrk CPU % of 1 core", base.cpu.pct(base.cpu.clients_s),
                    res.cpu.pct(res.cpu.clients_s))
            )  # fmt: skip
            rep.add(
                Row(sc, f"c={conns} wrk drives baseline faster", f"{base.rate:.0f}/s",
                    f"{res.rate:.0f}/s", "base > csv", base.rate > res.rate)
            )  # fmt: skip
            b_other = base.cpu.noise_pct
            c_other = res.cpu.noise_pct
            rep.add(
                Row(sc, f"c={conns} other processes' CPU % (noise)", b_other, c_other,
                    f"<= {NOISE_PERCENT:.0f}", max(b_other, c_other) <= NOISE_PERCENT)
            )  # fmt: skip
    if h.workers:
        label = f"csvstore --workers {h.workers}"
        for conns in s.small_levels:
            one = results[("csvstore", conns)]
            many = results[(label, conns)]
            target = ">= 1.3x" if conns == 64 else ""
            met = many.rate >= 1.3 * one.rate if conns == 64 else None
            rep.add(
                Row(f"small (--workers {h.workers} vs 1 proc)",
                    f"c={conns} uploads/s (baseline col = 1 process)", one.rate, many.rate,
                    target, met)
            )  # fmt: skip


# --------------------------------------------------------------------------- scenario: large


@dataclass
class CurlRun:
    wall_s: float
    mb_s: float
    codes: list[int]
    times: list[float]
    rss_start_mib: float
    peak_hwm_mib: float
    peak_sampled_mib: float
    verified: str
    cpu: CpuUse
    log: str = ""


async def sample_rss(root: int, stop: asyncio.Event, peak: list[int]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], tree_kib(root, "VmRSS"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def curl_uploads(
    h: Harness, kind: str, path: Path, count: int, size: int
) -> tuple[Server, CurlRun]:
    server = await h.start(kind, workers=h.workers if kind == "csvstore" else None)
    sid = f"bench-large-{uuid.uuid4().hex[:8]}"
    async with client() as http:
        await create_session(http, server, sid)
    await settle()
    rss_start = tree_kib(server.proc.pid, "VmRSS")
    stop = asyncio.Event()
    peak = [rss_start]
    sampler = asyncio.create_task(sample_rss(server.proc.pid, stop, peak))
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}"]
    cmd += ["-F", f"file=@{path}", "-F", f"session_id={sid}", f"{server.base}/api/csv/upload"]
    window = CpuWindow(server.proc.pid)
    window.start()
    t0 = time.perf_counter()
    try:
        outs = await asyncio.gather(*(h.run(cmd, timeout=900) for _ in range(count)))
    finally:
        wall = time.perf_counter() - t0
        stop.set()
        await sampler
    cpu = window.stop()
    hwm = tree_kib(server.proc.pid, "VmHWM")
    codes: list[int] = []
    times: list[float] = []
    for code, out, err in outs:
        parts = out.split()
        if code != 0 or len(parts) != 2:
            codes.append(0)
            print(f"  curl failed (exit {code}): {out} {err.strip()}", flush=True)
            continue
        codes.append(int(parts[0]))
        times.append(float(parts[1]))
    verified = ""
    if server.kind == "csvstore":
        async with client() as http:
            data = await get_json(http, f"{server.base}/api/csv/sessions/{sid}")
        sizes = sorted(int(f["file_size"]) for f in data["csv_files"])
        n_ok = sum(1 for c in codes if c == server.success)
        good = sizes == [size] * n_ok and n_ok == count
        verified = f"{len(sizes)} listed, sizes {'ok' if good else 'WRONG'}"
        if not good:
            print(f"  listed sizes {sizes[:10]} for {n_ok} answers {server.success}", flush=True)
    ok_bytes = size * sum(1 for c in codes if c == server.success)
    log = ""
    if any(c != server.success for c in codes):
        log = log_tail(server)
        print(f"  {server.label} answered {sorted(set(codes))}; its log ends:\n{log}", flush=True)
    run = CurlRun(
        wall_s=wall,
        mb_s=ok_bytes / wall / MB,
        codes=codes,
        times=times,
        rss_start_mib=rss_start / KIB,
        peak_hwm_mib=hwm / KIB,
        peak_sampled_mib=peak[0] / KIB,
        verified=verified,
        cpu=cpu,
        log=log,
    )
    return server, run


async def dd_reference(h: Harness, src: Path, fsync: bool) -> float:
    dst = h.tmp("dd") / "x"
    cmd = ["dd", f"if={src}", f"of={dst}", "bs=1M"] + (["conv=fsync"] if fsync else [])
    t0 = time.perf_counter()
    code, _out, err = await h.run(cmd, timeout=900)
    wall = time.perf_counter() - t0
    dst.unlink(missing_ok=True)
    if code != 0:
        raise BenchError(f"dd failed: {err}")
    return src.stat().st_size / wall / MB


def size_label(n: int) -> str:
    return f"{n // GIB} GiB" if n >= GIB and n % GIB == 0 else f"{n // MIB} MiB"


async def scenario_large(h: Harness, s: Settings, rep: Report) -> None:
    files = h.tmp("files")
    big = files / "big.csv"
    par = files / "par.csv"
    t0 = time.perf_counter()
    write_big_csv(big, s.big_size)
    write_big_csv(par, s.par_size)
    print(
        f"\n== large: wrote {size_label(s.big_size)} + {size_label(s.par_size)} CSV files "
        f"in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    dd_sync = await dd_reference(h, big, fsync=True)
    dd_cache = await dd_reference(h, big, fsync=False)
    print(
        f"  dd bs=1M of {size_label(s.big_size)}: {dd_sync:.0f} MB/s with conv=fsync, "
        f"{dd_cache:.0f} MB/s without",
        flush=True,
    )
    rep.record("dd", size=s.big_size, fsync_mb_s=dd_sync, cache_mb_s=dd_cache)
    cases = [
        (f"{s.big_count} x {size_label(s.big_size)}", big, s.big_count, s.big_size),
        (f"{s.par_count} x {size_label(s.par_size)}", par, s.par_count, s.par_size),
    ]
    runs: dict[tuple[str, str], CurlRun] = {}
    label = "csvstore"
    for index, (case, path, count, size) in enumerate(cases):
        # The single large upload also runs with hashing and profiling off, back to back.
        kinds = ("baseline", "csvstore", "csvstore-raw") if index == 0 else ("baseline", "csvstore")
        for kind in kinds:
            kept: CurlRun | None = None
            for attempt in range(1, s.large_attempts + 1):
                server, run = await curl_uploads(h, kind, path, count, size)
                label = server.label
                await h.stop(server)  # fresh process (VmHWM is a lifetime peak) and data dir
                print(
                    f"  {case:<14} {server.label:<22} {run.mb_s:7.0f} MB/s  wall "
                    f"{run.wall_s:6.2f} s  codes {sorted(set(run.codes))}  RSS start "
                    f"{run.rss_start_mib:.0f} MiB, peak {run.peak_hwm_mib:.0f} MiB (VmHWM), "
                    f"{run.peak_sampled_mib:.0f} MiB (sampled)  {run.verified}  {run.cpu.text()}",
                    flush=True,
                )
                rep.record(
                    "large", case=case, server=server.label, size=size, attempt=attempt,
                    **asdict(run),
                )  # fmt: skip
                failed = any(c != server.success for c in run.codes) or "WRONG" in run.verified
                if failed or kept is None or run.cpu.noise_pct < kept.cpu.noise_pct:
                    kept = run
                if failed or run.cpu.noise_pct <= NOISE_PERCENT:
                    break
                if attempt < s.large_attempts:
                    print(f"  (other processes used {run.cpu.noise_pct:.0f}% of a core: again)")
            assert kept is not None
            runs[(case, kind)] = kept
    rep.add(Row("large", "dd bs=1M conv=fsync MB/s (ref)", dd_sync, None))
    rep.add(Row("large", "dd bs=1M no fsync MB/s (ref)", dd_cache, None))
    sc = "large" if label == "csvstore" else f"large ({label})"
    for case, _path, count, _size in cases:
        b = runs[(case, "baseline")]
        c = runs[(case, "csvstore")]
        rep.add(Row(sc, f"{case} MB/s", b.mb_s, c.mb_s, ">= 0.9x", c.mb_s >= 0.9 * b.mb_s))
        raw = runs.get((case, "csvstore-raw"))
        if raw is not None:
            rep.add(
                Row(sc, f"{case} MB/s, sha256+profile on (baseline col = off)", raw.mb_s,
                    c.mb_s, ">= 0.75x", c.mb_s >= 0.75 * raw.mb_s)
            )  # fmt: skip
        rep.add(Row(sc, f"{case} MB/s vs dd fsync (baseline col = dd)", dd_sync, c.mb_s))
        rep.add(
            Row(sc, f"{case} peak RSS MiB", b.peak_hwm_mib, c.peak_hwm_mib, "<= base+32",
                c.peak_hwm_mib <= b.peak_hwm_mib + 32)
        )  # fmt: skip
        c_ok = sum(1 for x in c.codes if x == 201)
        rep.add(
            Row(sc, f"{case} answered ok (API check)", f"{b.codes.count(200)}/{count}",
                f"{c_ok}/{count} {c.verified}".strip(), "all",
                c_ok == count and "ok" in c.verified)
        )  # fmt: skip
        b_cpu, c_cpu = b.cpu.pct(b.cpu.server_s), c.cpu.pct(c.cpu.server_s)
        rep.add(Row(sc, f"{case} server CPU % of 1 core", b_cpu, c_cpu))
        if h.services is not None:
            svc = c.cpu.pct(c.cpu.services_s)
            rep.add(Row(sc, f"{case} PostgreSQL+SeaweedFS CPU % of 1 core", None, svc))
        rep.add(
            Row(sc, f"{case} other processes' CPU % (noise)", b.cpu.noise_pct, c.cpu.noise_pct,
                f"<= {NOISE_PERCENT:.0f}", max(b.cpu.noise_pct, c.cpu.noise_pct) <= NOISE_PERCENT)
        )  # fmt: skip
    big.unlink()
    par.unlink()


# --------------------------------------------------------------------------- scenario: listing


async def timed_gets(http: aiohttp.ClientSession, urls: list[str]) -> tuple[list[float], Any]:
    lat: list[float] = []
    sample: Any = None
    for url in urls:
        t0 = time.perf_counter()
        async with http.get(url) as resp:
            body = await resp.read()
        lat.append((time.perf_counter() - t0) * 1000)
        if resp.status != 200:
            raise BenchError(f"GET {url} -> {resp.status}: {body[:300]!r}")
        if sample is None:
            sample = (json.loads(body), resp.headers.get("Link"))
    return lat, sample


async def scenario_listing(h: Harness, s: Settings, rep: Report) -> None:
    n_s, n_f = s.list_sessions, s.list_files
    print(f"\n== listing: {n_s} sessions x {n_f} files, {s.list_requests} GETs each", flush=True)
    server = await h.start("csvstore", workers=h.workers)
    sc = "listing" if server.label == "csvstore" else f"listing ({server.label})"
    sids = [f"bench-list-{i:05d}" for i in range(n_s)]
    small = csv_block(256, with_header=True)
    async with client(limit=s.list_concurrency) as http:
        t0 = time.perf_counter()

        def make_session(sid: str) -> Callable[[], Awaitable[None]]:
            return lambda: create_session(http, server, sid)

        await gather_limited(s.list_concurrency, [make_session(sid) for sid in sids])
        t1 = time.perf_counter()

        def make_upload(sid: str, k: int) -> Callable[[], Awaitable[None]]:
            async def job() -> None:
                form = aiohttp.FormData()
                form.add_field("session_id", sid)
                form.add_field("file", small, filename=f"part{k}.csv", content_type="text/csv")
                async with http.post(f"{server.base}/api/csv/upload", data=form) as resp:
                    body = await resp.read()
                    if resp.status != 201:
                        raise BenchError(f"upload to {sid} -> {resp.status}: {body[:300]!r}")

            return job

        await gather_limited(
            s.list_concurrency, [make_upload(sid, k) for sid in sids for k in range(n_f)]
        )
        t2 = time.perf_counter()
    print(
        f"  created {n_s} sessions in {t1 - t0:.1f} s ({n_s / (t1 - t0):.0f}/s), "
        f"{n_s * n_f} uploads in {t2 - t1:.1f} s ({n_s * n_f / (t2 - t1):.0f}/s, "
        f"aiohttp client, {s.list_concurrency} tasks)",
        flush=True,
    )
    rng = random.Random(3)
    await settle()
    window = CpuWindow(server.proc.pid)
    window.start()
    async with client(limit=1) as http:
        await get_json(http, f"{server.base}/api/csv/sessions?limit=100")  # warm-up
        list_urls = [f"{server.base}/api/csv/sessions?limit=100"] * s.list_requests
        list_lat, (first_page, link) = await timed_gets(http, list_urls)
        one_urls = [
            f"{server.base}/api/csv/sessions/{rng.choice(sids)}" for _ in range(s.list_requests)
        ]
        one_lat, (one, _) = await timed_gets(http, one_urls)
    cpu = window.stop()
    page_ok = (
        isinstance(first_page, list)
        and len(first_page) == min(100, n_s)
        and all(len(x["csv_files"]) == n_f for x in first_page)
    )
    one_ok = len(one["csv_files"]) == n_f
    shape = (
        f"page of {len(first_page)} sessions with {n_f} files each: "
        f"{'ok' if page_ok else 'WRONG'}; Link header: {'yes' if link else 'no'}; "
        f"one session has {len(one['csv_files'])} files: {'ok' if one_ok else 'WRONG'}"
    )
    lp50, lp99 = percentile(list_lat, 50), percentile(list_lat, 99)
    op50, op99 = percentile(one_lat, 50), percentile(one_lat, 99)
    print(
        f"  GET /api/csv/sessions?limit=100: p50 {lp50:.2f} ms, p99 {lp99:.2f} ms\n"
        f"  GET /api/csv/sessions/{{id}}:      p50 {op50:.2f} ms, p99 {op99:.2f} ms\n"
        f"  {shape}\n"
        f"  during the GETs: {cpu.text()}",
        flush=True,
    )
    rep.record(
        "listing",
        server=server.label,
        sessions=n_s,
        files=n_f,
        create_sessions_s=t1 - t0,
        uploads_s=t2 - t1,
        list_ms=list_lat,
        one_ms=one_lat,
        shape=shape,
        cpu=asdict(cpu),
    )
    await h.stop(server)
    rep.add(
        Row(sc, f"{n_f * n_s} uploads/s (aiohttp client, {s.list_concurrency} tasks)", None,
            n_s * n_f / (t2 - t1))
    )  # fmt: skip
    rep.add(Row(sc, "GET sessions?limit=100 p50 ms", None, lp50, "<= 15 ms", lp50 <= 15))
    rep.add(Row(sc, "GET sessions?limit=100 p99 ms", None, lp99))
    rep.add(Row(sc, "GET sessions/{id} p50 ms", None, op50, "<= 3 ms", op50 <= 3))
    rep.add(Row(sc, "GET sessions/{id} p99 ms", None, op99))
    rep.add(
        Row(sc, "other processes' CPU % during GETs (noise)", None, cpu.noise_pct,
            f"<= {NOISE_PERCENT:.0f}", cpu.noise_pct <= NOISE_PERCENT)
    )  # fmt: skip
    rep.add(Row(sc, "response shapes", None, "ok" if page_ok and one_ok else "WRONG", "ok",
                page_ok and one_ok))  # fmt: skip


# --------------------------------------------------------------------------- main


async def scenario_tus(h: Harness, s: Settings, rep: Report) -> None:
    from bench.tus_scenarios import scenario_tus as run_tus  # it imports this module

    await run_tus(h, s, rep)


async def scenario_query(h: Harness, s: Settings, rep: Report) -> None:
    from bench.query_scenarios import scenario_query as run_query  # it imports this module

    await run_query(h, s, rep)


SCENARIO_FUNCS = {
    "small": scenario_small,
    "large": scenario_large,
    "listing": scenario_listing,
    "tus": scenario_tus,
    "query": scenario_query,
}


async def amain(args: argparse.Namespace, h: Harness, rep: Report) -> int:
    s = Settings.make(args.quick, args.wrk_threads)
    only = [x.strip() for x in args.only.split(",")] if args.only else list(SCENARIOS)
    failed: list[str] = []
    await h.start_services()
    await check_quiet(s, rep)
    await check_disk(h, s, rep)
    for name in only:
        try:
            await SCENARIO_FUNCS[name](h, s, rep)
        except BenchError as exc:
            failed.append(name)
            logs = "".join(
                f"\n  last lines of {sv.label}'s log:\n{log_tail(sv)}"
                for sv in h.servers
                if sv.kind == "csvstore" and not sv.stopped
            )
            rep.note(f"scenario {name} failed: {exc}{logs}")
            for server in list(h.servers):
                await h.stop(server)
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes and short runs (~2 min)")
    p.add_argument(
        "--only", metavar="SCENARIO", help=f"comma-separated subset of {', '.join(SCENARIOS)}"
    )
    p.add_argument("--workers", type=int, metavar="N", help="run csvstore with --workers N")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="sqlite",
        help="csvstore's metadata and storage: sqlite (SQLite + local folder, the default) or "
        "postgres-s3 (a throwaway PostgreSQL with fsync on + SeaweedFS S3, on 127.0.0.1)",
    )
    p.add_argument(
        "--ref",
        metavar="GIT_REF",
        help="run csvstore as committed at GIT_REF (git archive) instead of the working tree",
    )
    p.add_argument(
        "--markdown",
        action="store_true",
        help="also print the results as Markdown, ready for bench/RESULTS.md",
    )
    p.add_argument("--wrk-threads", type=int, default=2, help=argparse.SUPPRESS)
    # Development only: the command that stands in for csvstore, with {python}, {host},
    # {port} and {dir} placeholders (e.g. a second baseline while csvstore is not runnable).
    p.add_argument("--target-cmd", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.only:
        bad = [x for x in args.only.split(",") if x.strip() not in SCENARIOS]
        if bad:
            p.error(f"unknown scenario {', '.join(bad)}; choose from {', '.join(SCENARIOS)}")
    if args.workers is not None and args.workers < 1:
        p.error("--workers must be >= 1")
    return args


def raise_limits() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    rep = Report(
        OUT_DIR / f"results-{stamp}.jsonl", "" if args.backend == "sqlite" else args.backend
    )
    if not args.only or "small" in args.only or "tus" in args.only:
        ensure_wrk()
    raise_limits()
    info = machine_info()
    command = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"csvstore benchmark - {info['date']}")
    print(
        f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']}, {info['kernel']}, "
        f"Python {info['python']}, aiohttp {info['aiohttp']}, {info['wrk']}"
    )
    print(f"command: {command.strip()}")
    h = Harness(args.target_cmd, args.workers, args.backend)
    if args.ref:
        try:
            info["csvstore"] = f"{args.ref} ({h.checkout(args.ref)}, git archive)"
        except (BenchError, subprocess.CalledProcessError) as exc:
            h.cleanup()
            raise SystemExit(str(exc)) from exc
    else:
        info["csvstore"] = f"working tree at {info['commit']}"
    if args.target_cmd:
        info["csvstore"] = f"stand-in: {args.target_cmd}"
    info["backend"] = {
        "sqlite": "SQLite + local folder (csvstore's defaults)",
        "postgres-s3": "PostgreSQL (pg-test-cluster, fsync on) + S3 (SeaweedFS, s3-test-server)",
    }[args.backend]
    rep.record("machine", command=command.strip(), quick=args.quick, **info)
    print(f"csvstore: {info['csvstore']}")
    print(f"backend: {info['backend']}")
    print(
        f"temp dir {h.root} (chattr +T: {'yes' if h.topdir else 'no'}); "
        f"results -> {rep.path.relative_to(REPO)}",
        flush=True,
    )

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    code = 1
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            code = runner.run(amain(args, h, rep))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping servers and removing temp files", flush=True)
        code = 130
    finally:
        h.cleanup()
    elapsed = time.monotonic() - started
    if rep.rows:
        print("\n" + rep.table())
    for n in rep.notes:
        print(f"\n{n}")
    unmet = [r for r in rep.rows if r.met is False]
    print(
        f"\n{len(rep.rows)} figures, {sum(r.met is True for r in rep.rows)} targets met, "
        f"{len(unmet)} not met; {elapsed:.0f} s; JSON lines in {rep.path.relative_to(REPO)}"
    )
    header = (
        f"- date: {info['date']}\n"
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']}, {info['kernel']}, "
        f"Python {info['python']}, aiohttp {info['aiohttp']}, {info['wrk']}\n"
        f"- command: `{command.strip()}` ({elapsed:.0f} s)\n"
        f"- csvstore: {info['csvstore']}\n"
        f"- backend: {info['backend']}"
        + (f": {h.services.versions}" if h.services and h.services.versions else "")
        + "\n"
    )
    markdown = header + "\n" + rep.markdown() + "\n"
    if args.markdown:
        print("\n" + markdown)
    rep.record("end", elapsed_s=elapsed, exit_code=code, markdown=markdown)
    return code


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.modules.setdefault("bench.run", sys.modules[__name__])  # one copy for tus_scenarios
    sys.exit(main())

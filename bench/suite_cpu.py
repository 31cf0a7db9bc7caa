"""Where the test suite's time goes: the machine's CPU, per test file and per kind of process.

    python bench/suite_cpu.py --json suite.json                 # the whole suite (make test)
    python bench/suite_cpu.py tests/mtl/test_losses.py -- -q    # part of it, pytest options

Runs pytest (in a process of its own, with the given paths and options) and measures two
things while it runs:

1. Per test, from the machine's counters (/proc/stat): its wall time, the core-seconds the
   machine was busy meanwhile (this process and every other: Ray's workers and services,
   subprocesses) and the core-seconds it stood idle. Summed per test file. A file whose idle
   share is high waits (on Ray start-ups, Tune, sleeps) or runs on one core; one whose busy
   time is near twice its wall time keeps both cores of a 2-core machine busy.
2. Per process (sampled from /proc every 0.3 s): the CPU time of every process that ran,
   grouped by kind: pytest itself, Ray trial processes (`ray::ImplicitFunc`), fold actors
   (`ray::FoldWorker`), other Ray workers, Ray's services (raylet, GCS, agents, monitors),
   other subprocesses. The count and the mean per process show what each start-up costs.

The machine's own background (the sampler included, about 1%) counts as busy: run it on an
idle machine. Printed, and written as JSON with --json. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

TICK = os.sysconf("SC_CLK_TCK")  # /proc counts CPU time in clock ticks


def machine_seconds() -> tuple[float, float]:
    """Busy and idle core-seconds of the machine since boot (/proc/stat's first line)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / TICK, (idle + iowait) / TICK


class Plugin:
    """The pytest plugin (loaded in the pytest process by -p): each test's wall time and the
    machine's busy and idle core-seconds over it, written as JSON at the end."""

    def __init__(self, out: str):
        self.out, self.tests = out, {}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        busy, idle = machine_seconds()
        started = time.monotonic()
        yield
        busy_after, idle_after = machine_seconds()
        self.tests[item.nodeid] = {
            "wall": time.monotonic() - started,
            "busy": busy_after - busy,
            "idle": idle_after - idle,
        }

    def pytest_sessionfinish(self, session):
        Path(self.out).write_text(json.dumps(self.tests))


def pytest_configure(config):
    """Registers the plugin when pytest loads this module with `-p suite_cpu`."""
    out = os.environ.get("SUITE_CPU_TESTS")
    if out:
        config.pluginmanager.register(Plugin(out), "suite_cpu_plugin")


def process_kind(command: str) -> str:
    if command.startswith("ray::ImplicitFunc"):
        return "Ray trial process (ray::ImplicitFunc)"
    if command.startswith("ray::FoldWorker"):
        return "fold actor (ray::FoldWorker)"
    if command.startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent")) or any(
        s in command for s in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py")
    ):
        return "Ray services (raylet, GCS, agents, monitors)"
    if command.startswith("ray::") or "default_worker.py" in command:
        return "other Ray workers (idle pool, probes)"
    if "-m pytest" in command:
        return "pytest"
    return "other subprocesses (study.run, benches, CLIs)"


class ProcessSampler(threading.Thread):
    """Every process's CPU time, sampled until stopped; a Ray worker is named by the title
    Ray gives it (ray::...) once it has one."""

    def __init__(self, interval: float = 0.3):
        super().__init__(daemon=True)
        self.interval, self.stopped = interval, threading.Event()
        self.seen: dict[int, list] = {}  # pid -> [command, cpu seconds, cpu at first sight]
        self.first = True

    def sample(self) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / TICK
                command = Path(f"/proc/{entry.name}/cmdline").read_text().replace("\0", " ")
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile
            pid = int(entry.name)
            if pid not in self.seen:  # what ran before the suite does not count
                self.seen[pid] = [command, cpu, cpu if self.first else 0.0]
                continue
            record = self.seen[pid]
            record[1] = max(record[1], cpu)
            if command.startswith("ray::") and "IDLE" not in command:
                record[0] = command
        self.first = False

    def run(self) -> None:
        while not self.stopped.is_set():
            self.sample()
            time.sleep(self.interval)
        self.sample()

    def by_kind(self) -> dict[str, dict]:
        kinds = defaultdict(lambda: {"processes": 0, "cpu_s": 0.0})
        for command, cpu, before in self.seen.values():
            if cpu - before <= 0 or not command.strip():
                continue
            kind = kinds[process_kind(command)]
            kind["processes"] += 1
            kind["cpu_s"] += cpu - before
        return {
            name: {
                **k,
                "cpu_s": round(k["cpu_s"], 1),
                "mean_s": round(k["cpu_s"] / k["processes"], 2),
            }  # fmt: skip
            for name, k in sorted(kinds.items(), key=lambda kv: -kv[1]["cpu_s"])
        }


def by_file(tests: dict[str, dict]) -> dict[str, dict]:
    files = defaultdict(lambda: {"tests": 0, "wall": 0.0, "busy": 0.0, "idle": 0.0})
    for nodeid, t in tests.items():
        f = files[nodeid.split("::")[0]]
        f["tests"] += 1
        for key in ("wall", "busy", "idle"):
            f[key] += t[key]
    return {
        name: {k: round(v, 1) if isinstance(v, float) else v for k, v in f.items()}
        for name, f in sorted(files.items(), key=lambda kv: -kv[1]["wall"])
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="test paths (default: the whole suite); "
                        "pytest's options after --")  # fmt: skip
    parser.add_argument("--top", type=int, default=25, help="test files printed")
    parser.add_argument("--json", help="write the results to this file")
    argv = sys.argv[1:] if argv is None else list(argv)
    # What follows `--` is pytest's: its options are not this script's.
    cut = argv.index("--") if "--" in argv else len(argv)
    args, pytest_args = parser.parse_args(argv[:cut]), argv[cut + 1 :]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tests.json"
        env = {
            **os.environ,
            "SUITE_CPU_TESTS": str(out),
            # pytest loads this module as its plugin (-p suite_cpu)
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p
            ),
        }
        sampler = ProcessSampler()
        busy, idle = machine_seconds()
        started = time.monotonic()
        sampler.start()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "suite_cpu", *pytest_args, *args.paths],
            env=env,
        )
        wall = time.monotonic() - started
        sampler.stopped.set()
        sampler.join()
        busy_after, idle_after = machine_seconds()
        tests = json.loads(out.read_text()) if out.exists() else {}
    result = {
        "pytest_exit": done.returncode,
        "wall_s": round(wall, 1),
        "busy_core_s": round(busy_after - busy, 1),
        "idle_core_s": round(idle_after - idle, 1),
        "cores": os.cpu_count(),
        "processes": sampler.by_kind(),
        "files": by_file(tests),
        "tests": tests,
    }
    print(
        f"\n{result['wall_s']:.0f} s wall; the machine ({result['cores']} cores) busy "
        f"{result['busy_core_s']:.0f} core-s, idle {result['idle_core_s']:.0f} core-s\n"
    )
    print(f"{'CPU s':>8} {'procs':>6} {'mean s':>7}  kind of process")
    for name, k in result["processes"].items():
        print(f"{k['cpu_s']:8.1f} {k['processes']:6d} {k['mean_s']:7.2f}  {name}")
    print(f"\n{'wall s':>8} {'busy':>7} {'idle':>7} {'tests':>6}  test file (core-s)")
    for name, f in list(result["files"].items())[: args.top]:
        print(f"{f['wall']:8.1f} {f['busy']:7.1f} {f['idle']:7.1f} {f['tests']:6d}  {name}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(main()["pytest_exit"])

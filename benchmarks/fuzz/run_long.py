"""The long fuzz campaign: every target for ``--runs`` inputs (default 1,000,000), at low priority.

    nice -n 10 .venv/bin/python -m benchmarks.fuzz.run_long --runs 1000000 --jobs 2 [--deadline-utc 18:48]

Logs go to ``benchmarks/out/fuzz/<target>.log`` (not committed), grown corpora and crash inputs to
``$FUZZ_WORK_DIR`` (default ``/tmp/fapi-gateway-fuzz``). With ``--deadline-utc`` a target started
late gets only the time left (``-max_total_time``), so the table says honestly how far each got.
At the end a Markdown table (inputs, seconds, exec/s, cov, ft, crashes) is printed and written to
``benchmarks/out/fuzz/summary.md``; the exit status is 1 if any target crashed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import queue
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from . import TARGETS

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "out" / "fuzz"
# Slowest first (exec/s measured on the 2-core CI box), so they are not the ones cut by a deadline.
ORDER = ("front_proxy", "origin", "config", "dpop", "introspection", "jose", "htu", "canonical", "jwks", "jwk",
         "credentials")


@dataclass
class Result:
    target: str
    runs: int = 0
    seconds: int = 0
    cov: int = 0
    ft: int = 0
    crashed: bool = False
    rc: int = 0
    capped: bool = False
    slowest_s: int = 0

    @property
    def rate(self) -> int:
        return self.runs // self.seconds if self.seconds else self.runs


def parse_log(target: str, text: str, rc: int) -> Result:
    res = Result(target, rc=rc)
    done = re.findall(r"^Done (\d+) (?:runs )?in (\d+) second", text, re.M)
    if done:
        res.runs, res.seconds = int(done[-1][0]), int(done[-1][1])
    else:  # a crash or a time cap: the last status line has the count
        counts = re.findall(r"^#(\d+)\s", text, re.M)
        res.runs = int(counts[-1]) if counts else 0
        units = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
        if units:
            res.runs = max(res.runs, int(units[-1]))
        times = re.findall(r"^#\d+\s.*?exec/s: (\d+)", text, re.M)
        res.seconds = res.runs // int(times[-1]) if times and int(times[-1]) else 0
    cov = re.findall(r"cov: (\d+) ft: (\d+)", text)
    if cov:
        res.cov, res.ft = int(cov[-1][0]), int(cov[-1][1])
    slowest = re.findall(r"stat::slowest_unit_time_sec:\s*(\d+)", text)
    res.slowest_s = int(slowest[-1]) if slowest else 0
    res.crashed = rc != 0 or "ERROR: libFuzzer" in text or "Uncaught Python exception" in text
    return res


def run_target(target: str, runs: int, deadline: dt.datetime | None, nice: int) -> Result:
    cmd = ["nice", "-n", str(nice), sys.executable, "-m", f"benchmarks.fuzz.{target}", f"-atheris_runs={runs}"]
    capped = False
    if deadline is not None:
        left = int((deadline - dt.datetime.now(dt.UTC)).total_seconds())
        if left < 30:
            return Result(target, capped=True)
        cmd.append(f"-max_total_time={left}")
        capped = True
    log = OUT / f"{target}.log"
    with log.open("w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.call(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    res = parse_log(target, log.read_text(errors="replace"), rc)
    res.capped = capped and res.runs < runs
    return res


def table(results: list[Result], runs: int) -> str:
    lines = [
        "| target | inputs | of | seconds | exec/s | cov | ft | slowest input (s) | crashes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        cut = " (cut by the deadline)" if r.capped else ""
        lines.append(f"| {r.target} | {r.runs:,} | {runs:,}{cut} | {r.seconds} | {r.rate:,} | {r.cov} | {r.ft} "
                     f"| {r.slowest_s} | {'CRASH (see log)' if r.crashed else 'none'} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--deadline-utc", help="HH:MM today (UTC): no target runs past it")
    ap.add_argument("--summarize", action="store_true", help="only re-read the logs of a finished run")
    ap.add_argument("targets", nargs="*", default=list(ORDER))
    args = ap.parse_args()
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        ap.error(f"unknown targets: {sorted(unknown)}")
    deadline = None
    if args.deadline_utc:
        hh, mm = map(int, args.deadline_utc.split(":"))
        deadline = dt.datetime.now(dt.UTC).replace(hour=hh, minute=mm, second=0, microsecond=0)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.summarize:
        found = [(t, OUT / f"{t}.log") for t in args.targets if (OUT / f"{t}.log").exists()]
        done = [parse_log(t, log.read_text(errors="replace"), 0) for t, log in found]
        for r in done:
            r.capped = r.runs < args.runs
        print(table(done, args.runs))
        return 1 if any(r.crashed for r in done) else 0
    todo: queue.Queue[str] = queue.Queue()
    for t in args.targets:
        todo.put(t)
    results: dict[str, Result] = {}

    def worker() -> None:
        while True:
            try:
                t = todo.get_nowait()
            except queue.Empty:
                return
            results[t] = run_target(t, args.runs, deadline, args.nice)
            r = results[t]
            print(f"{t}: {r.runs:,} inputs in {r.seconds} s, cov {r.cov} ft {r.ft}, "
                  f"{'CRASH' if r.crashed else 'no crash'}", flush=True)

    threads = [threading.Thread(target=worker) for _ in range(max(1, args.jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ordered = [results[t] for t in args.targets if t in results]
    md = table(ordered, args.runs)
    (OUT / "summary.md").write_text(md + "\n")
    print(md)
    return 1 if any(r.crashed for r in ordered) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Profile a running server's hot path with py-spy while the load generator drives it.

``run.py --profile gw-dpop`` calls ``record``; the summary (where the CPU time goes: own time per
function, and inclusive time of the gateway's stages) lands in benchmarks/out/profile-<key>.md,
which RESULTS.md includes. py-spy samples from outside the process, so the gateway is unmodified.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from .servers import ROOT

# Leaf frames of helper threads blocked on a lock (e.g. the access-log writer waiting for lines,
# idle thread-pool workers): py-spy may count them as active, but they use no CPU (checked with
# per-thread utime+stime from /proc/<pid>/task/*/stat under load: the event-loop thread has ~98 %).
_IDLE_LEAVES = frozenset({
    "threading.py:Condition.wait", "threading.py:Event.wait", "queue.py:Queue.get",
    "concurrent/futures/thread.py:_worker",
})
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """``decide (/work/main/gateway/pipeline.py:66)`` -> ``gateway/pipeline.py:decide``."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("/site-packages/", "/work/main/", str(ROOT) + "/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{m.group('func')}"


def summarize(raw: Path, title: str, top: int = 22) -> str:
    """Own (self) and inclusive sample shares from py-spy's collapsed-stack output."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        if frames[-1] in _IDLE_LEAVES:
            idle += n
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if total == 0:
        return f"py-spy recorded no samples for {title}."

    def table(counter: Counter[str], keep: Callable[[str], bool]) -> list[str]:
        rows = ["| share | function |", "|---|---|"]
        rows += [f"| {100 * n / total:.1f} % | `{f}` |" for f, n in counter.most_common() if keep(f)][:top]
        return rows

    out = [
        f"py-spy, {total} samples of {title} under load (c64, hot token, fresh proof per request); "
        f"{idle} samples of helper threads blocked in a wait were dropped as idle. Native time inside "
        "uvloop/OpenSSL is charged to the last Python frame py-spy sees (e.g. `run_app`, `Runner.run`, "
        "`SSLObject.do_handshake` even with no new connections): read those rows together as TLS + "
        "socket I/O.",
        "",
    ]
    out += ["Own time (where the CPU actually is):", ""]
    out += table(own, lambda f: True)
    out += ["", "Inclusive time of the server's own functions (stage costs; process entry frames omitted):", ""]
    out += table(incl, lambda f: f.startswith(("gateway/", "benchmarks/")) and incl[f] < 0.97 * total)
    return "\n".join(out)


def record(pid: int, seconds: float, raw: Path) -> subprocess.Popen[bytes] | str:
    """Start py-spy on ``pid`` (and its worker processes); returns the process, or why not."""
    pyspy = ROOT / ".venv" / "bin" / "py-spy"
    if not pyspy.exists():
        return "py-spy not installed (.venv/bin/pip install py-spy)"
    return subprocess.Popen(
        [str(pyspy), "record", "-p", str(pid), "--subprocesses", "-r", "200",
         "-d", str(int(seconds)), "-f", "raw", "-o", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )

"""A short run of every atheris harness (benchmarks/fuzz) in the default test run.

Each target gets a few thousand coverage-guided inputs from its seed corpus (built from valid
inputs), in a subprocess; a crash (an exception other than the target's documented refusals, a
hang past libFuzzer's -timeout) makes the process exit non-zero and fails the test. The long
campaign (1M inputs per target) is ``benchmarks/fuzz/run_long.py``; figures in benchmarks/FUZZING.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks.fuzz import TARGETS

ROOT = Path(__file__).resolve().parents[2]
RUNS = 2500
MAX_SECONDS = 4  # a cap, not an assertion: slow targets (certificate parsing) stop here


def _atheris() -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:  # pragma: no cover - the dev lock has it
        pytest.fail("atheris is not installed: install requirements-dev.txt (atheris<3.1)")


def _run(args: list[str], work: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FUZZ_WORK_DIR": str(work), "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.parametrize("target", TARGETS)
def test_short_fuzz_run_finds_no_crash(target: str, tmp_path: Path) -> None:
    _atheris()
    proc = _run(["-m", f"benchmarks.fuzz.{target}", f"-atheris_runs={RUNS}", f"-max_total_time={MAX_SECONDS}",
                 "-seed=1"], tmp_path)
    out = proc.stdout + proc.stderr
    crashes = list((tmp_path / "crashes").glob("*"))
    assert proc.returncode == 0 and not crashes, f"{target} crashed; inputs {crashes}\n{out[-4000:]}"
    assert "Done " in out or "max_total_time" in out or "#" in out, out[-2000:]


def test_a_harness_reports_a_crash(tmp_path: Path) -> None:
    """The check above can fail: an exception outside the allowed refusals stops the run, exit != 0."""
    _atheris()
    script = tmp_path / "selftest.py"
    script.write_text(textwrap.dedent("""
        from benchmarks.fuzz._harness import run

        def one(data: bytes) -> None:
            if data.startswith(b"BOOM"):
                raise KeyError("not a documented refusal")
            raise ValueError("a documented refusal")

        run("selftest", one, (ValueError,), lambda: [b"BOOM", b"ok"])
    """))
    proc = _run([str(script), "-atheris_runs=100"], tmp_path, timeout=60)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "KeyError" in proc.stdout + proc.stderr
    assert list((tmp_path / "crashes").glob("selftest-crash-*"))

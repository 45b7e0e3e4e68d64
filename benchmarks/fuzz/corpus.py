"""Write the seed corpus of every target (or the ones named) to a directory, one file per seed.

    .venv/bin/python -m benchmarks.fuzz.corpus [--out DIR] [target ...]

Each target builds its seeds from valid inputs (token, proof and certificate shapes the tests use,
``certs/dev``, ``config/``), signed with the fixed keys of ``keys.py``. A target run without a
corpus directory writes its own seeds to ``$FUZZ_WORK_DIR/corpus/<target>`` first; this command is
for seeding another fuzzer or inspecting them. Nothing here is committed.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from . import TARGETS
from ._harness import work_dir, write_seeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="default: $FUZZ_WORK_DIR/corpus")
    ap.add_argument("targets", nargs="*", default=list(TARGETS))
    args = ap.parse_args()
    root = args.out or work_dir() / "corpus"
    for name in args.targets:
        module = importlib.import_module(f"benchmarks.fuzz.{name}")
        seeds = module.seeds()
        out = write_seeds(name, seeds, root / name)
        print(f"{name}: {len(seeds)} seeds -> {out}")


if __name__ == "__main__":
    main()

"""Side-by-side benchmark harness (issue 8): ``bash benchmarks/run.sh`` writes benchmarks/RESULTS.md."""

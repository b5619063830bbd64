"""genserve's benchmarks: `python -m bench` (see bench/README.md)."""

# genserve before anything imports torch: its package sets how this process runs generation
# (the OpenMP wait policy), and in-process measurements must run as the generators do.
import genserve  # noqa: F401

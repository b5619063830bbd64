"""genserve: production serving of Stable Diffusion 3.5 and Stable Video Diffusion on BentoML."""

import os

# On a CPU, torch's OpenMP threads spin while they wait for each other. A generator shares its
# cores with genserve's HTTP process (encoding, the event loop) and often with other work: a
# thread spinning for a preempted peer burns the CPU time the peer needs, and on a busy 2-core
# machine a served generator made 5x fewer images (bench/README.md). Sleeping costs a wake-up
# per operation instead. Set before anything imports torch: OpenMP reads it once, at load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

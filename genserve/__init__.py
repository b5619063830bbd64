"""genserve: production serving of Stable Diffusion 3.5 and Stable Video Diffusion on BentoML."""

import os

# On a CPU, torch's OpenMP threads spin while they wait for each other, burning the time a
# preempted peer (or genserve's HTTP process) needs: on a busy 2-core machine a served generator
# made 5x fewer images (bench/README.md). Set before anything imports torch: OpenMP reads it once.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

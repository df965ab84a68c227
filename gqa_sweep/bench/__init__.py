"""gqa-bench: attention, decode, serving and training-throughput benchmarks across G (see `cli` for usage).

One module per job: `common` (environment, timing, memory, tables), `attention`, `decode`, `serve`, `train`,
and `cli` (the `gqa-bench` console script).
"""

from gqa_sweep.bench.cli import main  # the `gqa-bench` console script (older installs point at gqa_sweep.bench:main)

__all__ = ["main"]

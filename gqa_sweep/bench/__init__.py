"""gqa-bench: attention, decode, serving and training-throughput benchmarks across G (see `cli` for usage).

One module per job: `common` (environment, timing, memory, models and random inputs born on the device, tables),
`steps` (the decoders timed: eager, CUDA-graph), `attention`, `decode`, `variants`, `roofline`, `serve`,
`figures` (the plots' shared dressing), `train`, and `cli` (the `gqa-bench` console script).
"""

from gqa_sweep.bench.cli import main  # the `gqa-bench` console script (older installs point at gqa_sweep.bench:main)

__all__ = ["main"]

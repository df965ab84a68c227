"""`gqa-sweep`: the Hydra entry point. Light on purpose: Hydra composes the config and the sweeper or
the run callback (gqa_sweep.sweep) plans it (gqa_sweep.plan) before torch and Lightning are imported, so bad
input fails in about a second. Training itself is `gqa_sweep.run.train.run`.
"""

from __future__ import annotations

import logging
import sys
import warnings

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    warnings.filterwarnings("ignore", ".*treespec, LeafSpec.*")  # lightning vs torch 2.13 pytree deprecation
    from gqa_sweep.run.oom import releasing
    from gqa_sweep.run.train import run  # heavy: torch, Lightning

    # After the import: lightning.pytorch sets its own logger to INFO when first imported (a joblib or
    # submitit worker imports it here), which would print its tips in every job's log.
    for noisy in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with releasing():  # a failed job's model and optimizer state leave the device before the sweep's next job
        run(cfg)


def cli() -> None:
    """The console script: Hydra's main, after turning a flag combination Hydra rejects with a traceback
    into one line that names what to run instead."""
    args = sys.argv[1:]
    multirun = any(a in ("-m", "--multirun") for a in args)
    if multirun and any(a in ("-c", "--cfg") or a.startswith("--cfg=") for a in args):
        print(
            "gqa-sweep: --cfg shows one run's config and cannot be combined with -m; to list a sweep's jobs "
            "(names, run ids, already done or not) run `gqa-sweep -m preview=true ...`",
            file=sys.stderr,
        )
        raise SystemExit(2)
    main()


if __name__ == "__main__":
    cli()

"""The run's Lightning Trainer, with its metrics callback, progress bar and resumable checkpoint."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning as L

from gqa_sweep.spec import RunSpec, thawed
from gqa_sweep.train.callbacks import RunMetrics, StepProgress


def show_bar(progress: str) -> bool:
    """progress=auto draws the step bar only on a terminal: logs and CI get one line per run."""
    return progress == "bar" or (progress == "auto" and sys.stderr.isatty())


def build_metrics(spec: RunSpec, vocab_size: int) -> RunMetrics:
    m = spec.metrics
    return RunMetrics(
        tokens_per_step=spec.tokens_per_step,
        divergence_loss=m["divergence_factor"] * math.log(vocab_size),
        spike_window=m["spike_window"],
        spike_k=m["spike_k"],
        attn_logit_every=m["attn_logit_every"],
        throughput_warmup=min(int(m["throughput_warmup"]), spec.max_steps // 2),  # short uptraining runs too
    )


def build_trainer(spec: RunSpec, run_dir: Path, metrics: RunMetrics, loggers: list) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint

    steps = max(1, spec.max_steps)
    callbacks = [
        metrics,
        *([StepProgress(spec.name, steps, metrics.tokens_per_step, metrics.history)] if show_bar(spec.progress)
          else []),
        ModelCheckpoint(
            dirpath=str(run_dir),
            save_top_k=0,
            save_last=True,
            every_n_train_steps=spec.trainer.ckpt_every_n_steps,
        ),
    ]
    tkw = thawed(spec.trainer.lightning)
    tkw["val_check_interval"] = min(int(tkw["val_check_interval"]), steps)
    return L.Trainer(
        **tkw,
        accelerator=spec.trainer.accelerator,
        precision=spec.trainer.precision,
        max_steps=steps,
        callbacks=callbacks,
        logger=loggers or False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )

"""The run's Lightning Trainer, with its metrics callback, progress bar and resumable checkpoint."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from gqa_sweep.config import max_steps_of, resolved
from gqa_sweep.train.callbacks import RunMetrics, StepProgress

OWN_TRAINER_KEYS = ("ckpt_every_n_steps", "compile", "num_threads")  # ours, not L.Trainer arguments


def show_bar(progress: str) -> bool:
    """progress=auto draws the step bar only on a terminal: logs and CI get one line per run."""
    return progress == "bar" or (progress == "auto" and sys.stderr.isatty())


def build_metrics(cfg: DictConfig, vocab_size: int) -> RunMetrics:
    steps = max_steps_of(resolved(cfg))
    return RunMetrics(
        tokens_per_step=int(cfg.data.batch_size) * int(cfg.data.block_size),
        divergence_loss=cfg.metrics.divergence_factor * math.log(vocab_size),
        spike_window=cfg.metrics.spike_window,
        spike_k=cfg.metrics.spike_k,
        attn_logit_every=cfg.metrics.attn_logit_every,
        throughput_warmup=min(int(cfg.metrics.throughput_warmup), steps // 2),  # short uptraining runs too
    )


def build_trainer(cfg: DictConfig, run_dir: Path, name: str, metrics: RunMetrics, loggers: list) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint

    config = resolved(cfg)
    steps = max_steps_of(config)
    callbacks = [
        metrics,
        *([StepProgress(name, steps, metrics.tokens_per_step, metrics.history)] if show_bar(str(cfg.progress)) else []),
        ModelCheckpoint(
            dirpath=str(run_dir),
            save_top_k=0,
            save_last=True,
            every_n_train_steps=int(cfg.trainer.ckpt_every_n_steps),
        ),
    ]
    tkw = {k: v for k, v in config["trainer"].items() if k not in OWN_TRAINER_KEYS}
    tkw["max_steps"] = max(1, steps)
    tkw["val_check_interval"] = min(int(tkw["val_check_interval"]), max(1, steps))
    return L.Trainer(
        **tkw,
        callbacks=callbacks,
        logger=loggers or False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )

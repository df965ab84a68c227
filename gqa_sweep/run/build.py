"""Build a run's parts from its config: precision, seed and threads, data, module, run directory."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import lightning as L
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf, open_dict

from gqa_sweep.config import ConfigError, max_steps_of, model_config, resolved, results_dir
from gqa_sweep.data.tokenizers import hf_tokenizer
from gqa_sweep.train.module import LMModule
from gqa_sweep.train.precision import native_bf16

log = logging.getLogger("gqa_sweep")


def resolve_precision(cfg: DictConfig) -> None:
    """`trainer.precision=auto`: bf16-mixed where the device computes bf16 natively, else 32-true with a note.
    The run id (gqa_sweep.plan), config.yaml and row all record the precision used."""
    if str(cfg.trainer.precision) != "auto":
        return
    native, why = native_bf16(str(cfg.trainer.accelerator))
    if not native:
        log.info("trainer.precision=auto: %s: training in fp32 (32-true)", why)
    with open_dict(cfg):
        cfg.trainer.precision = "bf16-mixed" if native else "32-true"


def seed_and_threads(cfg: DictConfig) -> None:
    """Before the data and the module: both draw from the seeded generators."""
    if cfg.trainer.num_threads:
        torch.set_num_threads(int(cfg.trainer.num_threads))
    L.seed_everything(int(cfg.seed), verbose=False)


def build_data(cfg: DictConfig, prepare: bool = True):
    """Build and prepare the data (tokenize or load from cache); bad data is a ConfigError."""
    from gqa_sweep.data import CorpusDataModule, DataError, MQARDataModule

    d = OmegaConf.to_container(cfg.data, resolve=True)
    if d.get("path"):
        d["path"] = to_absolute_path(d["path"])
    d["cache_dir"] = to_absolute_path(d["cache_dir"])
    cls = MQARDataModule if d.get("source") == "mqar" else CorpusDataModule
    try:
        dm = cls(**d, seed=int(cfg.seed), max_steps=max(1, max_steps_of(resolved(cfg))))
        if prepare:
            dm.prepare()
    except DataError as e:
        raise ConfigError(str(e)) from None
    return dm


def build_module(cfg: DictConfig, dm) -> LMModule:
    """The LightningModule at the data's vocabulary; warm-up capped at a fifth of a short run."""
    config = resolved(cfg)
    steps = max_steps_of(config)
    optim = dict(config["optim"])
    optim["warmup_steps"] = min(optim["warmup_steps"], max(1, steps // 5))
    return LMModule(
        model_config(config, dm.vocab_size_actual), max_steps=max(1, steps), compile=bool(cfg.trainer.compile), **optim
    )


def build_run_dir(cfg: DictConfig, run_id: str, dm) -> Path:
    """results_dir/runs/<run_id>/ with the run's resolved config and (text runs) its tokenizer."""
    run_dir = results_dir(cfg) / "runs" / run_id
    if cfg.force and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    if getattr(dm, "tokenizer", None) is not None:  # text runs; MQAR's ids are synthetic, with no text
        hf_tokenizer(dm.tokenizer).save(str(run_dir / "tokenizer.json"))  # gqa-export ships it with the model
    return run_dir

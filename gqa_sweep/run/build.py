"""Build a run's parts from its spec: seed and threads, data, module, run directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import torch
import yaml

from gqa_sweep.config import ConfigError
from gqa_sweep.data.tokenizer_export import hf_tokenizer
from gqa_sweep.spec import RunSpec, thawed
from gqa_sweep.train.module import LMModule


def seed_and_threads(spec: RunSpec) -> None:
    """Before the data and the module: both draw from the seeded generators."""
    if spec.trainer.num_threads:
        torch.set_num_threads(int(spec.trainer.num_threads))
    L.seed_everything(spec.seed, verbose=False)


def build_data(spec: RunSpec, prepare: bool = True):
    """Build and prepare the data (tokenize or load from cache); bad data is a ConfigError."""
    from gqa_sweep.data import CorpusDataModule, DataError, MQARDataModule

    d = thawed(spec.data)
    cls = MQARDataModule if d.get("source") == "mqar" else CorpusDataModule
    try:
        dm = cls(**d, seed=spec.seed, max_steps=max(1, spec.max_steps))
        if prepare:
            dm.prepare()
    except DataError as e:
        raise ConfigError(str(e)) from None
    return dm


def build_module(spec: RunSpec, dm) -> LMModule:
    """The LightningModule at the data's vocabulary; warm-up capped at a fifth of a short run."""
    optim = thawed(spec.optim)
    optim["warmup_steps"] = min(optim["warmup_steps"], max(1, spec.max_steps // 5))
    return LMModule(spec.model_at(dm.vocab_size_actual).to_dict(), max_steps=max(1, spec.max_steps),
                    compile=spec.trainer.compile, **optim)


def build_run_dir(spec: RunSpec, dm) -> Path:
    """results_dir/runs/<run_id>/ with the run's computation (config.yaml) and (text runs) its tokenizer."""
    run_dir = spec.run_dir
    if spec.force and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(spec.config, sort_keys=False))
    if getattr(dm, "tokenizer", None) is not None:  # text runs; MQAR's ids are synthetic, with no text
        hf_tokenizer(dm.tokenizer).save(str(run_dir / "tokenizer.json"))  # gqa-export ships it with the model
    return run_dir

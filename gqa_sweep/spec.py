"""RunSpec: one frozen, typed, torch-free description of a run, built once by the planner from Hydra's config.

Every step of the run (data, module, trainer, loggers, measurements, row), the callbacks and the sweep read
the spec; none of them reads Hydra's config or resolves anything again. `build_spec` is the only place that
resolves the config, derives the steps an uptraining run takes and turns relative paths absolute; the run id
is the hash of the spec's `computation` (gqa_sweep.config.identify).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from gqa_sweep.config import identify
from gqa_sweep.model.shape import ModelConfig

OWN_TRAINER_KEYS = ("accelerator", "precision", "compile", "num_threads", "ckpt_every_n_steps", "max_steps")


def frozen(d: Mapping) -> Mapping:
    """A read-only view of a deep copy: a spec's sections cannot be changed by a step that reads them."""
    return MappingProxyType(copy.deepcopy(dict(d)))


def thawed(d: Any) -> Any:
    """Plain, mutable data again (for YAML, JSON, wandb and building a derived spec)."""
    if isinstance(d, Mapping):
        return {k: thawed(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [thawed(v) for v in d]
    return d


def resolved(cfg: DictConfig) -> dict:
    """The run's resolved config as plain data, without Hydra's own node."""
    d = OmegaConf.to_container(cfg, resolve=False)
    d.pop("hydra", None)  # resolving it needs a running Hydra job; it is not part of the run anyway
    return OmegaConf.to_container(OmegaConf.create(d), resolve=True)


def max_steps_of(config: Mapping) -> int:
    """Steps to train; an uptraining run (init.alpha set) derives them from the parent's S steps."""
    init, steps = config["init"], config["trainer"]["max_steps"]
    if init.get("alpha") is None:
        return steps
    S, alpha = init["parent_steps"], init["alpha"]
    return round((1 + alpha) * S) if init["method"] == "scratch" else round(alpha * S)


def absolute(path: str | None) -> str | None:
    """Relative paths are taken from the directory gqa-sweep was started in (Hydra may chdir later)."""
    return None if path is None else to_absolute_path(str(path))


@dataclass(frozen=True)
class TrainerSpec:
    accelerator: str
    precision: str  # resolved for this device: never `auto`
    precision_note: str  # why `auto` fell back to fp32 on this device ("" if it did not)
    compile: bool
    num_threads: int | None
    ckpt_every_n_steps: int
    lightning: Mapping[str, Any]  # the remaining L.Trainer keyword arguments (devices, strategy, val interval...)


@dataclass(frozen=True)
class InitSpec:
    method: str  # scratch | mean | first | random
    checkpoint: str | None  # absolute
    parent_steps: int | None
    alpha: float | None

    @property
    def label(self) -> str:
        return "scratch" if self.method == "scratch" else f"mha_{self.method}"


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    name: str
    sweep: str  # a label: not part of the computation
    results_dir: str  # absolute
    force: bool
    seed: int
    max_steps: int  # what the run trains (uptraining: derived from the parent's steps)
    model_name: str
    param_match: str
    model: ModelConfig  # the normalised shape; its vocab_size comes from the data (`model_at`)
    data: Mapping[str, Any]  # the data group, paths absolute
    optim: Mapping[str, Any]
    trainer: TrainerSpec
    init: InitSpec
    metrics: Mapping[str, Any]
    logger: Mapping[str, Any]
    progress: str
    computation: Mapping[str, Any]  # the normalised config: its hash is run_id, and the row stores it
    allow_repeats: bool = False  # data.allow_repeats: a size ladder may read its corpus more than once
    lr_note: str = ""  # where `optim.lr=transfer` took its lr from ("" for an lr given as a number)

    def model_at(self, vocab_size: int) -> ModelConfig:
        """The model at the vocabulary its data produced (a char tokenizer's depends on the corpus)."""
        return replace(self.model, vocab_size=vocab_size)

    @property
    def run_dir(self) -> Path:
        return Path(self.results_dir) / "runs" / self.run_id

    @property
    def tokens_per_step(self) -> int:
        return int(self.data["batch_size"]) * int(self.data["block_size"])

    @property
    def config(self) -> dict:
        """The computation as plain data (config.yaml, wandb's config, the row's `config`)."""
        return thawed(self.computation)

    def parent(self) -> RunSpec:
        """The MHA run this run converts: same shape and data, G = H, `init.parent_steps` steps from scratch."""
        config = self.config
        config["model"]["n_kv_heads"] = config["model"]["n_heads"]
        config["trainer"]["max_steps"] = int(self.init.parent_steps)
        config["init"] = {"method": "scratch", "checkpoint": None, "parent_steps": None, "alpha": None}
        config["force"] = False
        return build_spec(config, self.trainer.precision_note)


def build_spec(config: dict, precision_note: str = "", lr_note: str = "") -> RunSpec:
    """The spec of a resolved, checked config whose `trainer.precision` is already resolved for its device
    (gqa_sweep.plan.planned_config). Settings that change nothing are normalised first (config.normalised),
    so two spellings of one computation get one spec and one id."""
    computation, run_id, name, model = identify(config)
    c = computation
    t = dict(c["trainer"])
    if t["precision"] == "auto":
        raise ValueError("build_spec needs trainer.precision resolved for the device (gqa_sweep.plan.planned_config)")
    data = dict(c["data"])
    data.pop("order", None)  # the batch order's version: part of the id, fixed by this code
    allow_repeats = bool(data.pop("allow_repeats", False))  # a check's switch, not the data's
    for key in ("path", "cache_dir"):
        if key in data:
            data[key] = absolute(data[key])
    init = c["init"]
    return RunSpec(
        run_id=run_id,
        name=name,
        sweep=str(c["sweep"]),
        results_dir=absolute(c["results_dir"]),
        force=bool(c.get("force", False)),
        seed=int(c["seed"]),
        max_steps=max_steps_of(c),
        model_name=str(c["model"].get("name", "")),
        param_match=c["model"].get("param_match", "none"),
        model=model,
        data=frozen(data),
        optim=frozen(c["optim"]),
        trainer=TrainerSpec(
            accelerator=str(t.get("accelerator", "cpu")),
            precision=str(t["precision"]),
            precision_note=precision_note,
            compile=bool(t.get("compile", False)),
            num_threads=t.get("num_threads") or None,
            ckpt_every_n_steps=int(t.get("ckpt_every_n_steps", 500)),
            lightning=frozen({k: v for k, v in t.items() if k not in OWN_TRAINER_KEYS}),
        ),
        init=InitSpec(method=init["method"], checkpoint=absolute(init.get("checkpoint")),
                      parent_steps=init.get("parent_steps"), alpha=init.get("alpha")),
        metrics=frozen(c["metrics"]),
        logger=frozen(c["logger"]),
        progress=str(c.get("progress", "auto")),
        computation=frozen(computation),
        allow_repeats=allow_repeats,
        lr_note=lr_note,
    )


def data_key(spec: RunSpec) -> str:
    """Jobs with the same data key share one prepared dataset."""
    return json.dumps(thawed(spec.data), sort_keys=True)

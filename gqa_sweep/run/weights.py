"""A run's initial weights when they are not random: an MHA parent converted to this run's G."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

from hydra.utils import to_absolute_path
from omegaconf import DictConfig, open_dict

from gqa_sweep.config import ConfigError, resolved, results_dir, run_id_of
from gqa_sweep.hf.convert import convert_model, load_source
from gqa_sweep.plan import planned_config
from gqa_sweep.store.locks import file_lock
from gqa_sweep.train.checkpoint import load_model
from gqa_sweep.train.module import LMModule

log = logging.getLogger("gqa_sweep")


def parent_config(cfg: DictConfig) -> DictConfig:
    """The MHA run this run converts: same shape and data, G = H, `init.parent_steps` steps from scratch."""
    parent = copy.deepcopy(cfg)
    with open_dict(parent):
        parent.model.n_kv_heads = parent.model.n_heads
        parent.trainer.max_steps = int(cfg.init.parent_steps)
        parent.init = {"method": "scratch", "checkpoint": None, "parent_steps": None, "alpha": None}
        parent.force = False
    return parent


def initial_weights(cfg: DictConfig, module: LMModule, train_parent: Callable[[DictConfig], dict]) -> str:
    """Load converted weights into `module`; returns the parent's run id or path. `train_parent` trains the
    MHA parent when it is not in the store yet (the run itself, passed in so this module stays below it)."""
    init, G = cfg.init, resolved(cfg)["model"]["n_kv_heads"]  # one G, or one per layer
    if init.checkpoint is not None:
        try:
            (parent, _), parent_id = load_source(to_absolute_path(init.checkpoint)), str(init.checkpoint)
        except ValueError as e:  # CheckpointError: not a model, unreadable
            raise ConfigError(f"init.checkpoint: {e}") from None
    else:
        parent_cfg = parent_config(cfg)
        parent_id = run_id_of(planned_config(parent_cfg))
        model_pt = results_dir(cfg) / "runs" / parent_id / "model.pt"
        with file_lock(results_dir(cfg) / "locks" / f"{parent_id}.lock"):
            if not model_pt.exists():
                log.info("training the MHA parent %s (%d steps) for conversion", parent_id, init.parent_steps)
                train_parent(parent_cfg)
        parent, _ = load_model(model_pt)
    try:
        converted = convert_model(parent, G, init.method, seed=int(cfg.seed))
    except ValueError as e:
        raise ConfigError(f"init: {e}") from None
    if converted.cfg.to_dict() != module.model.cfg.to_dict():
        raise ConfigError(
            f"the parent model's shape does not match this run's model config: parent "
            f"{converted.cfg.to_dict()} vs run {module.model.cfg.to_dict()}; set model.* to the parent's shape"
        )
    module.model.load_state_dict(converted.state_dict())
    return parent_id

"""A run's initial weights when they are not random: an MHA parent converted to this run's G."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from gqa_sweep.config import ConfigError
from gqa_sweep.hf.convert import convert_model, load_source
from gqa_sweep.spec import RunSpec
from gqa_sweep.store.locks import file_lock
from gqa_sweep.train.checkpoint import load_model
from gqa_sweep.train.module import LMModule

log = logging.getLogger("gqa_sweep")


def initial_weights(spec: RunSpec, module: LMModule, train_parent: Callable[[RunSpec], dict]) -> str:
    """Load converted weights into `module`; returns the parent's run id or path. `train_parent` trains the
    MHA parent when it is not in the store yet (the run itself, passed in so this module stays below it)."""
    init = spec.init
    if init.checkpoint is not None:
        try:
            (parent, _), parent_id = load_source(init.checkpoint), init.checkpoint
        except ValueError as e:  # CheckpointError: not a model, unreadable
            raise ConfigError(f"init.checkpoint: {e}") from None
    else:
        parent_spec = spec.parent()
        parent_id, model_pt = parent_spec.run_id, parent_spec.run_dir / "model.pt"
        with file_lock(Path(spec.results_dir) / "locks" / f"{parent_id}.lock"):
            if not model_pt.exists():
                log.info("training the MHA parent %s (%d steps) for conversion", parent_id, init.parent_steps)
                train_parent(parent_spec)
        parent, _ = load_model(model_pt)
    try:
        converted = convert_model(parent, spec.model.n_kv_heads, init.method, seed=spec.seed)
    except ValueError as e:
        raise ConfigError(f"init: {e}") from None
    if converted.cfg.to_dict() != module.model.cfg.to_dict():
        raise ConfigError(
            f"the parent model's shape does not match this run's model config: parent "
            f"{converted.cfg.to_dict()} vs run {module.model.cfg.to_dict()}; set model.* to the parent's shape"
        )
    module.model.load_state_dict(converted.state_dict())
    return parent_id

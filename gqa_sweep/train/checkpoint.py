"""Model checkpoints: our own `model.pt` files and Lightning `.ckpt` files both load as a DecoderLM."""

from __future__ import annotations

from pathlib import Path

import torch

from gqa_sweep.model.shape import build_shape
from gqa_sweep.model.transformer import DecoderLM


class CheckpointError(ValueError):
    pass


def save_model(model: DecoderLM, path: str | Path, meta: dict | None = None) -> Path:
    """Write {"model_config", "state_dict", "meta"} with torch.save."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_config": model.cfg.to_dict(), "state_dict": model.state_dict(), "meta": meta or {}}, path)
    return path


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[DecoderLM, dict]:
    """Load a DecoderLM from a `save_model` file or a Lightning checkpoint of `LMModule`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; pass a model.pt or a Lightning .ckpt file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{str(path)!r} is not a PyTorch checkpoint ({e.__class__.__name__}: {e})") from e
    if isinstance(obj, dict) and "model_config" in obj and "state_dict" in obj:
        cfg, state, meta = obj["model_config"], obj["state_dict"], obj.get("meta", {})
    elif isinstance(obj, dict) and "model_config" in obj.get("hyper_parameters", {}):
        cfg = obj["hyper_parameters"]["model_config"]
        state = {k.removeprefix("model."): v for k, v in obj["state_dict"].items() if k.startswith("model.")}
        meta = {"global_step": obj.get("global_step")}
    else:
        raise CheckpointError(
            f"{str(path)!r} is not a gqa-sweep model checkpoint (no 'model_config'); "
            "pass a model.pt written by gqa-sweep/gqa-convert or a Lightning .ckpt of LMModule"
        )
    try:
        model = DecoderLM(build_shape(cfg))
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{str(path)!r} holds a model that does not load: {str(e).splitlines()[0]}") from e
    return model, meta

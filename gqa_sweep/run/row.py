"""The run's row: what the run is (its description), then what it measured; plus its summary line.

The columns and their types are the store's schema (gqa_sweep.store.results.RUN_COLUMNS, documented in
docs/metrics.md); `write_run` rejects any column not in it.
"""

from __future__ import annotations

import math
import socket
import time
import traceback
from datetime import datetime, timezone

import torch

from gqa_sweep.spec import RunSpec
from gqa_sweep.train.module import LMModule


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Clock:
    """The run's start, as a row records it (ISO time) and as its wall time is measured (perf counter)."""

    def __init__(self) -> None:
        self.started_at, self.t0 = now_iso(), time.perf_counter()

    def wall_s(self) -> float:
        return time.perf_counter() - self.t0


def describe_run(spec: RunSpec, module: LMModule, dm, parent_id: str | None, clock: Clock) -> dict:
    """The columns that say what the run is: known before it trains, kept in a failure row too."""
    m = module.model.cfg
    return {
        "run_id": spec.run_id,
        "run_name": spec.name,
        "sweep": spec.sweep,
        "model_name": spec.model_name,
        "attention": m.attention,
        "n_heads": m.n_heads,
        "n_kv_heads": m.kv_groups if m.uniform else None,  # MLA: none (one latent per token, no G)
        "kv_layout": m.kv_layout if m.kv_groups is not None else None,
        "group_size": m.group_size if m.kv_groups is not None else None,
        "kv_lora_rank": m.kv_lora_rank,  # None unless the type has the knob (ModelConfig refuses it elsewhere)
        "rope_dim": m.rope_dim,
        "n_layers": m.n_layers,
        "d_model": m.d_model,
        "d_head": m.d_head,
        "d_ff": m.d_ff,
        "param_match": spec.param_match,
        "vocab_size": dm.vocab_size_actual,
        "n_params": module.model.num_params(),
        "n_params_non_embedding": module.model.num_params(non_embedding=True),
        "seed": spec.seed,
        "lr": spec.optim["lr"],
        "batch_size": int(spec.data["batch_size"]),
        "block_size": int(spec.data["block_size"]),
        "max_steps": spec.max_steps,
        "data_name": dm.name,
        "data_train_tokens": getattr(dm, "train_tokens", None),  # MQAR: none (generated examples)
        "tokenizer": dm.tokenizer_label,
        "precision": spec.trainer.precision,
        "sdpa_backend": m.sdpa_backend,
        "qk_norm": bool(m.qk_norm),
        "parametrization": m.parametrization,
        "z_loss": float(spec.optim.get("z_loss", 0.0)),
        "init": spec.init.label,
        "alpha": spec.init.alpha,
        "parent_run_id": parent_id,
        "torch_version": torch.__version__,
        "host": socket.gethostname(),
        "config": spec.config,
        "started_at": clock.started_at,
    }


def finished_row(base: dict, summary: dict, measured: dict, val_loss: float, module: LMModule, dm, trainer,
                 clock: Clock) -> dict:
    """The completed (or diverged) run's row: description, training summary, measurements, validation."""
    diverged = summary["diverged_step"] is not None
    row = {**base, **summary, **measured}
    if not diverged:  # loss by position bucket; MQAR: recall accuracy overall and per test segment
        row.update(module.val_stats.row(getattr(dm, "test_segments", None)))
    tokens_per_step = base["batch_size"] * base["block_size"] * trainer.world_size
    tokens_seen = (summary["diverged_step"] or base["max_steps"]) * tokens_per_step
    row.update(
        status="diverged" if diverged else "completed",
        val_loss=val_loss,
        val_ppl=math.exp(val_loss) if math.isfinite(val_loss) and val_loss < 700 else math.nan,
        tokens_seen=tokens_seen,
        # Passes over the train split: a ladder's largest size should not repeat its data more than a few times.
        epochs=tokens_seen / base["data_train_tokens"] if base.get("data_train_tokens") else None,
        tokens_per_param=tokens_seen / base["n_params_non_embedding"],  # a ladder trains each size at ~20
        wall_s=clock.wall_s(),
        finished_at=now_iso(),
    )
    return row


def failed_row(base: dict, summary: dict, error: Exception, clock: Clock) -> dict:
    """What a failed run leaves in the store: its description, what it measured so far, and the error."""
    return {
        **base,
        **summary,
        "status": "failed",
        "error": f"{error.__class__.__name__}: {error}\n{traceback.format_exc(limit=8)}",
        "wall_s": clock.wall_s(),
        "finished_at": now_iso(),
    }


def run_line(name: str, run_id: str, row: dict) -> str:
    """The run's one summary line; a blank train tok/s is explained rather than left empty."""
    parts = [f"{name} {run_id} {row['status']}: val_loss {row['val_loss']:.4f} ppl {row['val_ppl']:.3f}"]
    if math.isfinite(row["train_tokens_per_s"]):
        parts.append(
            f"{row['train_tokens_per_s']:,.0f} train tok/s (p10-p90 {row['train_tokens_per_s_p10']:,.0f}-"
            f"{row['train_tokens_per_s_p90']:,.0f})"
        )
    else:
        parts.append("train tok/s not measured (run shorter than metrics.throughput_warmup + one window)")
    if row.get("compile_s") is not None and math.isfinite(row["compile_s"]):
        parts.append(f"compiled in {row['compile_s']:.0f} s (not in tok/s)")
    parts.append(f"{row['decode_tokens_per_s']:,.0f} decode tok/s")
    if row.get("diverged_step") is not None:
        parts.append(f"diverged at step {row['diverged_step']}")
    return " | ".join(parts)

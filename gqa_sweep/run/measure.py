"""Numbers a run takes after training: FLOPs per token, MFU, KV-cache bytes, decode speed."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch

from gqa_sweep.model.decode import resolve_mode
from gqa_sweep.model.kv import DTYPE_BYTES
from gqa_sweep.model.shape import non_embedding_params
from gqa_sweep.spec import RunSpec
from gqa_sweep.train.metrics import cache_bound, decode_tokens_per_s, device_name, flops_per_token, precision_dtype
from gqa_sweep.train.module import LMModule
from gqa_sweep.train.peak import correct_peak, measured_peak, mfu


def decode_plan(spec: RunSpec, bound_batch: Callable[[int], int] | None = None) -> tuple[int, int, int]:
    """(batch, prompt, new tokens) of the per-run decode; the cache ends holding prompt + new tokens.

    New tokens are capped at half the block, so the default 64 also fits a short block (e.g. MQAR's 64).
    metrics.decode_fill_cache=true grows the prompt so the cache ends full (block_size tokens): the
    cache-bound setting where fewer KV heads pay off; otherwise the prompt is metrics.decode_prompt_tokens.
    `bound_batch` (cache-bound decode, metrics.decode_cache_bound): fills the cache too, at the batch it returns
    for metrics.decode_batch.
    """
    block, m = int(spec.data["block_size"]), spec.metrics
    new = min(int(m["decode_new_tokens"]), max(1, block // 2))
    fill = m.get("decode_fill_cache", False) or bound_batch is not None
    prompt = block - new if fill else min(int(m["decode_prompt_tokens"]), block - new)
    return (int(m["decode_batch"]) if bound_batch is None else bound_batch(int(m["decode_batch"]))), prompt, new


def measure(spec: RunSpec, module: LMModule, dm, trainer, summary: dict) -> dict:
    """Per-run numbers taken after training: FLOPs, MFU, KV bytes, decode speed."""
    device = trainer.strategy.root_device
    model = module.model
    dtype = precision_dtype(spec.trainer.precision)
    kv_dtype = dtype if dtype in ("bf16", "fp16") else "fp32"
    fpt = flops_per_token(model, int(spec.data["block_size"]))
    achieved = summary["train_tokens_per_s"] * fpt
    peak = correct_peak(device, dtype, achieved)  # re-measured when this run beat it: mfu <= 1 by construction
    elem = int(DTYPE_BYTES[kv_dtype])
    batch, prompt_tokens, new = decode_plan(spec, cache_bound(spec.metrics, model.cfg, device, elem))
    mode = resolve_mode(spec.metrics.get("decode_mode", "auto"), device)
    out = {
        "device": device_name(device),
        "flops_per_token": fpt,
        "model_flops_per_s": achieved,
        "mfu": mfu(achieved, peak),
        "peak_flops": peak.flops,
        "peak_source": peak.source,
        "peak_measured_at": peak.measured_at or None,
        "peak_flops_measured": measured_peak(device, dtype).flops,  # a GPU's beside its datasheet `peak_flops`
        "kv_dtype": kv_dtype,
        "kv_bytes_per_token": model.cfg.kv_bytes_per_token(elem),
        "decode_tokens_per_s": math.nan,
        "decode_batch": batch,
        "decode_context": prompt_tokens + new,
        "decode_mode": mode,
        "decode_cache_over_weights": model.cfg.kv_bytes_per_token(elem) * (prompt_tokens + new) * batch
        / (non_embedding_params(model.cfg) * elem),
    }
    if summary["diverged_step"] is None and trainer.is_global_zero:
        # Decode as it would be served: weights and cache in the training compute dtype.
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[kv_dtype]
        infer = copy.deepcopy(model).to(device=device, dtype=torch_dtype)
        prompt = dm.sample_prompt(batch, prompt_tokens).to(device)
        out["decode_tokens_per_s"] = decode_tokens_per_s(infer, prompt, new, mode=mode)
    return out

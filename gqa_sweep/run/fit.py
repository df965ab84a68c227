"""Will the run fit its device? A floor of the memory it needs, checked before it trains (a `gqa-kv --memory`
style check: a warning, not a refusal; the estimate is a floor, activations come on top).

Training in any precision keeps fp32 weights and AdamW's two fp32 moments (12 bytes a parameter) for the whole
run; by the optimizer step every parameter also has an fp32 gradient (16 bytes), and after training the
per-run decode adds its KV cache. During a forward the gradients are freed (set to None) but the batch's
logits exist at once: tokens x vocab in the compute dtype. So the run needs at least
max(16 N + decode cache, 12 N + logits) bytes (docs/metrics.md).
"""

from __future__ import annotations

import logging
import os

from gqa_sweep.model.kv import human_bytes

log = logging.getLogger("gqa_sweep")

STATE_BYTES = 12  # per parameter, all run long: fp32 weights + AdamW's exp_avg and exp_avg_sq
GRAD_BYTES = 4  # per parameter at the optimizer step: fp32 gradients


def memory_floor(n_params: int, tokens_per_step: int, vocab_size: int, compute_bytes: int,
                 cache_bytes: int = 0) -> dict[str, int]:  # fmt: skip
    """The floor's terms and the floor itself (`total`), in bytes; torch-free."""
    terms = {
        "weights + AdamW state": STATE_BYTES * n_params,
        "gradients": GRAD_BYTES * n_params,
        "logits": tokens_per_step * vocab_size * compute_bytes,
        "decode cache": cache_bytes,
    }
    at_step = terms["weights + AdamW state"] + terms["gradients"] + terms["decode cache"]
    in_forward = terms["weights + AdamW state"] + terms["logits"]
    return {**terms, "total": max(at_step, in_forward)}


def device_memory(device) -> tuple[int, str]:
    """(bytes this process can have on `device`, how that was read): a GPU's free memory (other processes'
    use excluded), a CPU's physical memory."""
    import torch

    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free, f"free of {human_bytes(total, binary=True)} on {torch.cuda.get_device_name(device)}"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory"


def fit_warning(floor: dict[str, int], available: int, where: str, batch: int, block: int) -> str | None:
    """The warning for a run whose floor exceeds `available` bytes (None when it fits)."""
    if floor["total"] <= available:
        return None
    terms = ", ".join(f"{k} {human_bytes(v, binary=True)}" for k, v in floor.items() if k != "total" and v)
    return (f"this run needs at least {human_bytes(floor['total'], binary=True)} ({terms}) but the device has "
            f"{human_bytes(available, binary=True)} ({where}): it will run out of memory. Lower data.batch_size "
            f"(now {batch}) or data.block_size (now {block}), or train a smaller model")


def warn_if_unfit(module, spec, device, available: tuple[int, str] | None = None) -> str | None:
    """Log (and return) the warning when the run cannot fit `device`; `available` overrides the device's
    memory (bytes, description), as tests do."""
    from gqa_sweep.model.kv import DTYPE_BYTES
    from gqa_sweep.run.measure import decode_plan
    from gqa_sweep.train.metrics import precision_dtype

    dtype = precision_dtype(spec.trainer.precision)
    compute_bytes = int(DTYPE_BYTES.get(dtype, 4))
    batch, block = int(spec.data["batch_size"]), int(spec.data["block_size"])
    decode_batch, prompt, new = decode_plan(spec)
    cache = module.model.cfg.kv_bytes_per_token(compute_bytes) * decode_batch * (prompt + new)
    floor = memory_floor(module.model.num_params(), batch * block, module.model.cfg.vocab_size, compute_bytes,
                         cache)  # fmt: skip
    warning = fit_warning(floor, *(available or device_memory(device)), batch, block)
    if warning:
        log.warning("%s", warning)
    return warning

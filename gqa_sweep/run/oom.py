"""A run that fails, out of memory included, ends as a `failed` row that says where, and gives its memory back.

`where_failed` adds to the failed row the phase (train | validate | measure: the decode and peak after the
fit) and the step that was running; out of memory, the error also says the batch, the sequence length and the
peak bytes, and names the fix. `releasing` frees what a failed run held (its model, optimizer state and
activations stay referenced by the exception's traceback until the sweep ends), so the sweep's next job, in the
same process, starts with the device's memory.
"""

from __future__ import annotations

import contextlib
import gc
import traceback

import torch

from gqa_sweep.model.kv import human_bytes

AFTER_FIT = "measure"  # a failure outside the Lightning loops: the decode and the peak measured after training


def is_oom(error: BaseException) -> bool:
    """Out of memory: CUDA's OutOfMemoryError, or a CPU allocation that failed."""
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


def where_failed(row: dict, failed_at: tuple[str | None, int] | None, error: BaseException,
                 device_total: int | None = None) -> dict:  # fmt: skip
    """The failed row's `failed_phase` and `failed_step` (the 1-based step that was running in training, the
    steps done otherwise), and for out of memory an `error` that says where and what to change.

    `failed_at` is RunMetrics.failed_at: (Lightning stage, optimizer steps done) when a Lightning loop raised,
    None when the failure came after the fit."""
    stage, done = failed_at if failed_at else (AFTER_FIT, row.get("max_steps"))
    phase = stage or AFTER_FIT
    step = done + 1 if phase == "train" else done
    out = {"failed_phase": phase, "failed_step": step}
    if is_oom(error):
        peak = row.get("peak_mem_bytes")
        of = f" of {human_bytes(device_total, binary=True)}" if device_total else ""
        held = f", {human_bytes(peak, binary=True)}{of} allocated at the peak" if peak else ""
        out["error"] = (
            f"out of memory in {phase}" + (f" step {step}" if step is not None else "")
            + f" (batch {row.get('batch_size')} x sequence {row.get('block_size')} tokens{held}): lower "
            f"data.batch_size or data.block_size, or train a smaller model\n{row.get('error', '')}"
        )  # fmt: skip
    return out


def device_total(device: torch.device) -> int | None:
    """The device's memory in bytes (GPU only: a CPU's RAM is not what ran out of a CUDA allocation)."""
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


def release(error: BaseException) -> None:
    """Drop the locals of the frames `error` passed through (finished frames only: the running ones cannot
    be cleared) and return the cached device memory; the traceback's text stays."""
    traceback.clear_frames(error.__traceback__)
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def releasing():
    """Around a run: a failure still propagates (Hydra records the job as failed and the sweep goes on with
    the next), but without the failed run's model and optimizer state."""
    try:
        yield
    except Exception as e:
        release(e)
        raise

"""Validation numbers beyond the mean loss: loss by position bucket, and MQAR recall accuracy per test segment.

Sums are accumulated over one validation pass (reset at its start), summed over ranks under DDP, and turned
into row columns at the end of the run. Positions whose label is -100 (every non-query position of MQAR) are
left out of every number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence

import torch

IGNORE = -100
POSITION_BUCKETS = 8  # equal slices of the block: enough to see a trend with position, few enough to plot
MAX_SEGMENTS = 32  # fixed-size per-segment buffers, so that every rank reduces tensors of the same shape


class ValStats:
    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.reset()

    def reset(self) -> None:
        self.pos_loss = torch.zeros(self.block_size, dtype=torch.float64)
        self.pos_count = torch.zeros(self.block_size, dtype=torch.float64)
        self.seg_correct = torch.zeros(MAX_SEGMENTS, dtype=torch.float64)
        self.seg_count = torch.zeros(MAX_SEGMENTS, dtype=torch.float64)

    @torch.no_grad()
    def update(self, tok_loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, seg: torch.Tensor | None) -> None:
        """tok_loss, y: (B, T), 0 / IGNORE at ignored positions; logits (B, T, V); seg (B,) for MQAR batches."""
        mask = y != IGNORE
        T = y.shape[1]
        self.pos_loss[:T] += (tok_loss * mask).sum(0).double().cpu()
        self.pos_count[:T] += mask.sum(0).double().cpu()
        if seg is not None:  # recall: argmax accuracy at the labelled (query) positions, per test segment
            correct = ((logits.argmax(-1) == y) & mask).sum(1).double().cpu()
            self.seg_correct.index_add_(0, seg.cpu(), correct)
            self.seg_count.index_add_(0, seg.cpu(), mask.sum(1).double().cpu())

    def reduce(self, op: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sum the buffers over ranks with `op` (e.g. the Lightning strategy's reduce)."""
        for name in ("pos_loss", "pos_count", "seg_correct", "seg_count"):
            setattr(self, name, op(getattr(self, name)))

    def loss_by_position(self, n_buckets: int = POSITION_BUCKETS) -> list[float | None]:
        """Mean loss over each of `n_buckets` equal slices of the block (None where nothing is labelled)."""
        out = []
        for loss, count in zip(self.pos_loss.tensor_split(n_buckets), self.pos_count.tensor_split(n_buckets)):
            n = float(count.sum())
            out.append(float(loss.sum()) / n if n > 0 else None)
        return out

    def row(self, segments: Sequence | None) -> dict:
        """Row columns: `val_loss_by_pos` always; `recall_acc` and its per-segment JSON for MQAR (segments given)."""
        out: dict = {"val_loss_by_pos": json.dumps(self.loss_by_position())}
        if segments:
            per = [
                {"segment": s.label, "seq_len": s.seq_len, "num_kv_pairs": s.num_kv_pairs,
                 "acc": float(self.seg_correct[i] / self.seg_count[i]) if self.seg_count[i] else math.nan,
                 "n": int(self.seg_count[i])}
                for i, s in enumerate(segments)
            ]
            total = float(self.seg_count.sum())
            out["recall_acc"] = float(self.seg_correct.sum()) / total if total else math.nan
            out["recall_acc_by_segment"] = json.dumps(per)
        return out

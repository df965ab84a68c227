"""LightningModule: next-token loss, AdamW, warm-up + cosine schedule, gradient clipping.

Metric bookkeeping lives in callbacks.py; this module only exposes the numbers a step produces
(`last_loss`, `last_grad_norm`: the global L2 norm *before* clipping), and after a validation pass
`val_stats` (loss by position, MQAR recall per test segment; val_stats.py). Labels of -100 are ignored
everywhere (F.cross_entropy's default ignore_index): MQAR labels only its query positions.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F

from gqa_sweep.model.shape import build_shape
from gqa_sweep.model.transformer import DecoderLM
from gqa_sweep.store.val_stats import IGNORE, ValStats


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to `min_lr_ratio` at `max_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def z_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PaLM's z-loss: mean over labelled tokens of log(Z)^2, Z the softmax normaliser (-100 labels skipped, as in
    CE)."""
    # A mask, not logits[y != IGNORE]: a boolean index has a data-dependent shape, a graph break under compile.
    labelled = (y != IGNORE).to(logits.dtype)
    return (logits.logsumexp(-1).pow(2) * labelled).sum() / labelled.sum()


def param_groups(model: DecoderLM, lr: float, weight_decay: float) -> list[dict]:
    """AdamW's groups: one per (lr, decay). Decay matrices only; norms' gains stay un-decayed (nanoGPT / Llama
    practice). muP's hidden matrices train at lr / m_in with decay x m_in (DecoderLM.lr_multipliers: MuAdamW's
    rule); under sp there are two groups, the decayed one first (group 0's lr is the one logged)."""
    # An HF comparator (gqa-bench train) is a standard-parametrization model: every multiplier is 1.
    multipliers = model.lr_multipliers() if hasattr(model, "lr_multipliers") else {}
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        mult = multipliers.get(name, 1.0)
        groups.setdefault((mult, weight_decay / mult if p.dim() >= 2 else 0.0), []).append(p)
    return [{"params": ps, "lr": lr * mult, "weight_decay": wd} for (mult, wd), ps in groups.items()]


class LMModule(L.LightningModule):
    def __init__(
        self,
        model_config: dict,
        lr: float = 3e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        warmup_steps: int = 20,
        max_steps: int = 1000,
        min_lr_ratio: float = 0.1,
        grad_clip: float | None = 1.0,
        z_loss: float = 0.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = DecoderLM(build_shape(model_config))
        # The whole training loss (model, fp32 cast, cross-entropy, z-loss) is one compiled graph: the logits'
        # cast and softmax fuse instead of round-tripping (tokens x vocab) fp32 tensors through memory.
        # Validation stays eager: a second (no-grad) compile would cost more than its few batches save.
        self._compiled_losses = None
        if compile:
            # Each run compiles afresh, for its own static shapes: compiled code is cached per function, so a
            # sweep's next shape would otherwise recompile with dynamic shapes (other kernels for some G than
            # for others), and past torch._dynamo.config.cache_size_limit shapes fall back to eager silently.
            torch._dynamo.reset()
            self._compiled_losses = torch.compile(self.losses, dynamic=False)
        self.last_loss: torch.Tensor | None = None
        self.last_grad_norm: torch.Tensor | None = None
        self.val_stats = ValStats(self.model.cfg.block_size)

    def flat_logits(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 logits as (tokens, vocab), the loss's layout."""
        return self.model(x).float().view(-1, self.model.cfg.vocab_size)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy (labels of -100 skipped)."""
        return F.cross_entropy(self.flat_logits(x), y.view(-1))

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy, the loss to minimise: CE plus the z-loss term when optim.z_loss > 0). Free of host
        syncs and graph breaks (tests/test_module.py), so `trainer.compile` turns it into one graph."""
        y = y.view(-1)
        logits = self.flat_logits(x)
        ce = F.cross_entropy(logits, y)
        if not self.hparams.z_loss:
            # No z term, no logsumexp over the vocabulary: it cost 14 % of a bf16 `small` step (docs/benchmarks.md).
            return ce, ce
        return ce, ce + self.hparams.z_loss * z_loss(logits, y)

    def training_step(self, batch, batch_idx):
        ce, loss = (self._compiled_losses or self.losses)(batch[0], batch[1])
        self.last_loss = ce.detach()  # the logged train loss stays comparable across z_loss settings
        return loss

    def on_validation_epoch_start(self) -> None:
        self.val_stats.reset()

    def validation_step(self, batch, batch_idx):
        # Batches are (x, y) for text, (x, y, segment) for MQAR, whose y is -100 except at query positions.
        x, y = batch[0], batch[1]
        logits = self.model(x).float()
        tok_loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), reduction="none").view_as(y)
        n_labelled = (y != IGNORE).sum()
        loss = tok_loss.sum() / n_labelled.clamp(min=1)
        # Weighted by labelled positions, so the epoch mean is the loss over labelled positions only.
        self.log("val_loss", loss, prog_bar=True, sync_dist=True, batch_size=int(n_labelled))
        self.val_stats.update(tok_loss, logits, y, batch[2] if len(batch) > 2 else None)
        return loss

    def on_validation_epoch_end(self) -> None:
        self.val_stats.reduce(lambda t: self.trainer.strategy.reduce(t, reduce_op="sum"))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # One pass gives both the pre-clip global norm (a stability metric) and the clipping itself.
        clip = self.hparams.grad_clip
        self.last_grad_norm = torch.nn.utils.clip_grad_norm_(
            self.parameters(), clip if clip and clip > 0 else float("inf")
        ).detach()

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(
            param_groups(self.model, hp.lr, hp.weight_decay),
            lr=hp.lr,
            betas=tuple(hp.betas),
            eps=hp.eps,
            # Fused AdamW: faster than foreach on the CPU too, not only on CUDA (docs/benchmarks.md).
            fused=self.device.type in ("cpu", "cuda") or None,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, hp.warmup_steps, hp.max_steps, hp.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

"""`gqa-bench train`: training tokens/s per G of the Lightning harness, a bare PyTorch loop and HF Llama."""

from __future__ import annotations

import argparse
import copy
import logging
import time
from types import SimpleNamespace

import pandas as pd
import torch
import torch.nn.functional as F

from gqa_sweep.bench.common import Env, model_config, profile_table, stats, synchronize
from gqa_sweep.model.shape import divisors
from gqa_sweep.model.transformer import DecoderLM
from gqa_sweep.train.metrics import flops_per_token
from gqa_sweep.train.peak import correct_peak


def to_hf_for_training(model: DecoderLM):
    """The same model and weights as `transformers.LlamaForCausalLM`, SDPA attention, no KV cache objects."""
    from gqa_sweep.hf.export import to_hf

    hf = to_hf(model)
    hf.set_attn_implementation("sdpa")
    hf.config.use_cache = False  # training builds no DynamicCache per forward
    return hf


class StepClock:
    """Timestamps at the start of step 0 and after every step (synchronised), for tokens/s after warm-up."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.stamps = device, []

    def stamp(self) -> None:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())

    def seconds_after(self, warmup: int) -> float:
        return self.stamps[-1] - self.stamps[warmup]


def lightning_clock_callback(clock: StepClock):
    import lightning as L

    class _Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                clock.stamp()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.stamp()

    return _Clock()


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


def bare_loop(model, forward, opt_cfg: dict, clip: float | None, loader, env: Env, clock: StepClock) -> None:
    """The plain PyTorch step: autocast forward, backward, clip, AdamW step, LR schedule, zero grads."""
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    autocast = torch.autocast(env.device.type, dtype=env.dtype, enabled=env.dtype != torch.float32)
    model.train()
    for i, (x, y) in enumerate(loader):
        if i == 0:
            clock.stamp()
        x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)
        with autocast:
            loss = cross_entropy(forward(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip and clip > 0 else float("inf"))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        clock.stamp()


def train_fns(a: argparse.Namespace, env: Env, G: int, loader) -> tuple[dict, dict[str, StepClock], DecoderLM]:
    """One round of warm-up + timed steps for: Lightning harness, bare loop, HF Llama (same weights)."""
    import lightning as L

    from gqa_sweep.train.module import LMModule

    torch.manual_seed(a.seed)
    steps = a.warmup + a.steps
    module = LMModule(model_config(a, G, a.seq).to_dict(), max_steps=steps, warmup_steps=1)
    bare = copy.deepcopy(module).to(env.device)
    hf = to_hf_for_training(copy.deepcopy(module.model)).to(env.device)  # the HF comparator on the bench's device
    clocks = {k: StepClock(env.device) for k in ("harness", "bare", "hf")}
    precision = {"fp32": "32-true", "bf16": "bf16-mixed"}[env.dtype_name]

    def harness():
        L.Trainer(
            accelerator=env.device.type, devices=1, precision=precision, max_steps=steps, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            limit_val_batches=0, num_sanity_val_steps=0, callbacks=[lightning_clock_callback(clocks["harness"])],
        ).fit(module, train_dataloaders=loader)  # fmt: skip

    def bare_round():
        bare_loop(bare.model, bare.model, bare.configure_optimizers(), bare.hparams.grad_clip, loader, env,
                  clocks["bare"])  # fmt: skip

    # The same AdamW groups and schedule as LMModule.configure_optimizers, built over the HF parameters.
    hf_opt = SimpleNamespace(model=hf, parameters=hf.parameters, hparams=module.hparams, device=env.device)

    def hf_round():
        bare_loop(hf, lambda x: hf(input_ids=x).logits, LMModule.configure_optimizers(hf_opt),
                  module.hparams.grad_clip, loader, env, clocks["hf"])  # fmt: skip

    return {"harness": harness, "bare": bare_round, "hf": hf_round}, clocks, bare.model


def token_loader(a: argparse.Namespace, vocab: int):
    g = torch.Generator().manual_seed(a.seed)
    data = torch.randint(vocab, (a.batch * (a.warmup + a.steps), a.seq + 1), generator=g)
    ds = torch.utils.data.TensorDataset(data[:, :-1], data[:, 1:])
    return torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=False, drop_last=True)


def bench_train(a: argparse.Namespace, env: Env) -> tuple[pd.DataFrame, str]:
    import lightning  # noqa: F401  (its import sets its logger to INFO; quiet it after)

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    rows, prof = [], ""
    for G in divisors(model_config(a, 1).n_heads):
        loader = token_loader(a, model_config(a, G).vocab_size)
        fns, clocks, model = train_fns(a, env, G, loader)
        tok_s: dict[str, list[float]] = {k: [] for k in fns}
        items = list(fns.items())
        for r in range(a.repeats):  # a round = warm-up + timed steps of each implementation, order alternating
            for name, fn in items if r % 2 == 0 else items[::-1]:
                clocks[name].stamps.clear()
                fn()
                tok_s[name].append(a.batch * a.seq * a.steps / clocks[name].seconds_after(a.warmup))
        (hm, hlo, hhi), (bm, blo, bhi), (fm, flo, fhi) = (stats(tok_s[k]) for k in ("harness", "bare", "hf"))
        fpt = flops_per_token(model, a.seq)
        rows.append(dict(
            G=G, params=model.num_params(), harness_tok_s=hm, harness_min=hlo, harness_max=hhi,
            bare_tok_s=bm, bare_min=blo, bare_max=bhi, hf_tok_s=fm, hf_min=flo, hf_max=fhi,
            harness_over_bare=hm / bm, ours_over_hf=bm / fm, model_TFLOPs=hm * fpt / 1e12, flops_per_token=fpt,
        ))  # fmt: skip
        if a.profile and G == 1:
            prof = profile_table(fns, env.device, row_limit=20)
    df = pd.DataFrame(rows)
    # One peak for the table, never below the fastest implementation's rate (re-measured if it was): MFU <= 1.
    fastest = max((df[f"{impl}_tok_s"] * df.flops_per_token).max() for impl in ("harness", "bare", "hf"))
    peak = correct_peak(env.device, env.dtype_name, fastest)
    for impl in ("harness", "bare", "hf"):
        df[f"{impl}_mfu"] = df[f"{impl}_tok_s"] * df.flops_per_token / peak.flops
    df = df.drop(columns="flops_per_token").assign(peak_TFLOPs=peak.flops / 1e12, peak_source=peak.source,
                                                   peak_measured_at=peak.measured_at)  # fmt: skip
    return df, prof

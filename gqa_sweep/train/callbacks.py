"""Stability and throughput metrics of a training run, as a Lightning callback (definitions: docs/metrics.md)."""

from __future__ import annotations

import math
import os
import resource
import time

import lightning as L
import torch

from gqa_sweep.store.val_stats import IGNORE
from gqa_sweep.train.gpu import others_on_gpu
from gqa_sweep.train.metrics import count_spikes, percentiles

CONTENDED_UTIL = 0.75  # below it a CPU run's threads waited for cores (docs/metrics.md)


def _cpu_seconds() -> float:
    """User + system CPU time of this process, every thread included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class RunMetrics(L.Callback):
    """Records per-step loss, pre-clip grad norm, lr and throughput; detects divergence.

    Values stay on the device and are read back every `flush_every` steps, so GPU steps are not
    serialised by a `.item()` each step. The state survives a resume from `last.ckpt`.
    """

    def __init__(
        self,
        tokens_per_step: int,
        divergence_loss: float,
        spike_window: int = 50,
        spike_k: float = 4.0,
        attn_logit_every: int = 50,
        throughput_warmup: int = 10,
        flush_every: int = 10,
    ) -> None:
        self.tokens_per_step = tokens_per_step
        self.divergence_loss = divergence_loss
        self.spike_window = spike_window
        self.spike_k = spike_k
        self.attn_logit_every = attn_logit_every
        self.throughput_warmup = throughput_warmup
        self.flush_every = flush_every
        self.history: list[dict] = []
        self.diverged_step: int | None = None
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor, float, float | None, tuple]] = []
        self._timed_tokens = 0  # tokens that carry a loss target (text: every position; MQAR: the queries)
        self._timed_processed = 0  # every position of every sequence, padding and MQAR's context included
        self._timed_s = 0.0
        self._timed_steps = 0
        self._first_step: list[float] = []  # [start] then [start, end] of this fit's first step (compiles)
        self.gpu_others: int | None = None  # most other processes seen on the run's GPU (None: unknown)
        self.failed_at: tuple[str | None, int] | None = None  # (stage, optimizer steps done) of an exception
        self._window_t0: float | None = None
        self._window_steps = 0
        self._window_tok_s: list[float] = []  # one value per timed window: its spread shows noisy throughput

    # -- state for resume ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"history": self.history, "diverged_step": self.diverged_step}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])
        self.diverged_step = state["diverged_step"]

    # -- hooks -------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self.resumed_from_step = trainer.global_step
        self._window_t0 = None
        self.compiled = bool(pl_module.hparams.get("compile", False))
        self._sample_gpu(pl_module)
        # How much of the machine the run had: the 1-minute load and the process's CPU time over the fit.
        self._load_start, self._cpu_t0 = os.getloadavg()[0], (_cpu_seconds(), time.perf_counter())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._first_step:  # one synchronised step: its excess over a timed one is the compile time
            self._sync(pl_module)
            self._first_step.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if len(self._first_step) == 1:
            self._sync(pl_module)
            self._first_step.append(time.perf_counter())
        step = trainer.global_step
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        logit = None
        if self.attn_logit_every and step % self.attn_logit_every == 0:
            logit = pl_module.model.max_attn_logit(batch[0][:4])
        grad_norm = pl_module.last_grad_norm if pl_module.last_grad_norm is not None else torch.tensor(math.nan)
        # Tokens with a loss target (kept on the device until the flush) and positions processed.
        tokens = (batch[1].ne(IGNORE).sum(), batch[0].numel())
        self._pending.append((step, pl_module.last_loss, grad_norm, lr, logit, tokens))
        if len(self._pending) >= self.flush_every:
            self._flush(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._flush(trainer, pl_module)  # validation time must not count as training time
        self._window_t0 = None
        self._sample_gpu(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and trainer.global_step >= self.throughput_warmup:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            self._window_t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self._flush(trainer, pl_module)
        self._sample_gpu(pl_module)
        if getattr(self, "_cpu_t0", None) is not None:
            cpu0, t0 = self._cpu_t0
            wall = max(time.perf_counter() - t0, 1e-9)
            self.cpu_util = (_cpu_seconds() - cpu0) / (wall * torch.get_num_threads())
            self.load = (self._load_start, os.getloadavg()[0])

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.failed_at = (trainer.state.stage.value if trainer.state.stage else None, trainer.global_step)

    @staticmethod
    def _sync(pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def _sample_gpu(self, pl_module) -> None:
        """Other processes on the run's GPU, at the fit's start and end and at each validation (not per step)."""
        others = others_on_gpu(pl_module.device) if pl_module.device.type == "cuda" else None
        if others is not None:
            self.gpu_others = max(others, self.gpu_others or 0)

    def _flush(self, trainer, pl_module) -> None:
        if not self._pending:
            return
        self._sync(pl_module)
        now = time.perf_counter()
        steps = [p[0] for p in self._pending]
        # The throughput window starts after the warm-up steps and after each validation pause.
        tok_s = math.nan
        if self._window_t0 is not None:
            dt = now - self._window_t0
            tokens = int(torch.stack([p[5][0] for p in self._pending]).sum()) * trainer.world_size
            self._timed_tokens += tokens
            self._timed_processed += sum(p[5][1] for p in self._pending) * trainer.world_size
            self._timed_s += dt
            self._timed_steps += len(self._pending)
            tok_s = tokens / dt
            self._window_tok_s.append(tok_s)
        if steps[-1] >= self.throughput_warmup:
            self._window_t0 = now
        losses = torch.stack([p[1].float() for p in self._pending]).tolist()
        norms = torch.stack([p[2].float() for p in self._pending]).tolist()
        for (step, _, _, lr, logit, _), loss, norm in zip(self._pending, losses, norms):
            row = {"step": step, "loss": loss, "grad_norm": norm, "lr": lr, "tokens_per_s": tok_s,
                   "max_attn_logit": logit}
            self.history.append(row)
            curves = {f"train/{k}": v for k, v in row.items() if k != "step" and v is not None and v == v}
            for lg in trainer.loggers:  # CSV / wandb curves, one point per step
                lg.log_metrics(curves, step=step)
            if self.diverged_step is None and (not math.isfinite(loss) or loss > self.divergence_loss):
                self.diverged_step = step
        self._pending.clear()
        if self.diverged_step is not None:
            trainer.should_stop = True

    # -- summary -----------------------------------------------------------------------------------
    def summary(self, device: torch.device) -> dict:
        losses = [h["loss"] for h in self.history]
        norms = [h["grad_norm"] for h in self.history]
        logits = [h["max_attn_logit"] for h in self.history if h["max_attn_logit"] is not None]
        finite_norms = [n for n in norms if math.isfinite(n)]
        tail = [x for x in losses[-self.flush_every :] if math.isfinite(x)]
        loss_spikes = count_spikes(losses, self.spike_window, self.spike_k)  # NaN: never a full window
        p10, p90 = percentiles(self._window_tok_s, (10, 90))
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
        else:  # CPU: the process's peak resident set (Linux reports KiB), an upper bound
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {
            "train_loss": sum(tail) / len(tail) if tail else math.nan,
            "grad_norm_max": max(finite_norms) if finite_norms else math.nan,
            "grad_norm_spikes": count_spikes(norms, self.spike_window, self.spike_k),
            "loss_spikes": loss_spikes,
            "loss_spike_score": loss_spikes / max(1, len(losses) - self.spike_window),
            "max_attn_logit": max(logits) if logits else math.nan,
            "diverged_step": self.diverged_step,
            "train_tokens_per_s": (
                self._timed_tokens / self._timed_s if self._timed_s > 0 else math.nan
            ),
            "train_tokens_processed_per_s": (
                self._timed_processed / self._timed_s if self._timed_s > 0 else math.nan
            ),
            "train_tokens_per_s_p10": p10,
            "train_tokens_per_s_p90": p90,
            "peak_mem_bytes": int(peak),
            "resumed_from_step": getattr(self, "resumed_from_step", 0) or None,
            "compile_s": self.compile_s(),
            **self.contention(device),
        }

    def compile_s(self) -> float | None:
        """A compiled run's first step minus a timed step's mean (compilation, with the first allocations an
        eager run pays too); NaN when no step was timed; None for an eager run."""
        if not getattr(self, "compiled", False):
            return None
        if len(self._first_step) < 2 or not self._timed_steps:
            return math.nan
        return self._first_step[1] - self._first_step[0] - self._timed_s / self._timed_steps

    def contention(self, device: torch.device) -> dict:
        """Whether the run had its share of the machine: `cpu_util` = process CPU time / (wall x threads) over
        the fit (a CPU run with its cores reads ~1; other work on the cores pulls it down), and the 1-minute
        load average at the fit's start and end. Contended: cpu_util < 0.75 on a CPU run, or a load above
        the cores + 1 (more runnable threads than cores). Its throughput is then not comparable.
        A GPU run's CPU figures mean nothing for its speed: they are null, and it is contended when another
        process held its GPU (`gpu_others` > 0; null when NVML / nvidia-smi cannot tell)."""
        if device.type == "cuda":
            others = self.gpu_others
            return {"cpu_util": None, "load_start": None, "load_end": None, "gpu_others": others,
                    "contended": None if others is None else others > 0}
        util = getattr(self, "cpu_util", math.nan)
        start, end = getattr(self, "load", (math.nan, math.nan))
        cores = os.cpu_count() or 1
        contended = max(start, end) > cores + 1 or (device.type == "cpu" and util < CONTENDED_UTIL)
        return {"cpu_util": util, "load_start": start, "load_end": end, "gpu_others": None,
                "contended": bool(contended) if math.isfinite(util) else None}


class StepProgress(L.Callback):
    """A step bar for one run on a terminal: steps done / max_steps, loss and train tokens/s.

    Lightning's own bar counts epochs and batches of an endless sampler (`Epoch 0/-2`); this one counts
    optimizer steps. Off a terminal (CI, logs, parallel jobs) nothing is drawn: the run's one summary
    line is the record. The loss shown is the last one RunMetrics read back (`history`), so drawing the bar
    never waits for the GPU.
    """

    def __init__(self, name: str, max_steps: int, tokens_per_step: int, history: list[dict],
                 refresh_s: float = 0.2) -> None:  # fmt: skip
        self.name, self.max_steps, self.tokens_per_step, self.refresh_s = name, max_steps, tokens_per_step, refresh_s
        self.history = history
        self.bar = None

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:  # one bar per run, not one per DDP process
            return
        from tqdm import tqdm

        self.bar = tqdm(total=self.max_steps, initial=trainer.global_step, desc=self.name, unit="step",
                        dynamic_ncols=True, leave=True, mininterval=self.refresh_s)
        self._last = (trainer.global_step, time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, now = trainer.global_step, time.perf_counter()
        if self.bar is None or (now - self._last[1] < self.refresh_s and step < self.max_steps):
            return
        tok_s = (step - self._last[0]) * self.tokens_per_step * trainer.world_size / max(now - self._last[1], 1e-9)
        loss = f"loss {self.history[-1]['loss']:.3f}, " if self.history else ""
        self.bar.set_postfix_str(f"{loss}{tok_s:,.0f} tok/s", refresh=False)
        self.bar.update(step - self.bar.n)
        self._last = (step, now)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()

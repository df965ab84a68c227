"""One run = one model at one G = one row in the results store.

Flow: config -> validate (before anything is trained or written) -> data -> model -> Lightning Trainer
with the RunMetrics callback -> final validation and decode speed -> one row + history in the store.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import logging
import math
import os
import shutil
import socket
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import torch
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf, open_dict

from gqa_sweep.callbacks import RunMetrics, StepProgress
from gqa_sweep.checkpoint import load_model, save_model
from gqa_sweep.config import (
    ConfigError,
    max_steps_of,
    model_config,
    resolved,
    results_dir,
    run_id_of,
    run_name,
    validate,
)
from gqa_sweep.data.tokenizers import hf_tokenizer
from gqa_sweep.kv import DTYPE_BYTES
from gqa_sweep.metrics import (
    decode_tokens_per_s,
    device_name,
    flops_per_token,
    native_bf16,
    precision_dtype,
)
from gqa_sweep.module import LMModule
from gqa_sweep.peak import device_peak
from gqa_sweep.results import ResultsStore
from gqa_sweep.sweep import TOTAL_ENV

log = logging.getLogger("gqa_sweep")

OWN_TRAINER_KEYS = ("ckpt_every_n_steps", "compile", "num_threads")


def make_datamodule(cfg: DictConfig, prepare: bool = True):
    """Build and prepare the data (tokenize or load from cache); bad data is a ConfigError."""
    from gqa_sweep.data import CorpusDataModule, DataError, MQARDataModule

    d = OmegaConf.to_container(cfg.data, resolve=True)
    if d.get("path"):
        d["path"] = to_absolute_path(d["path"])
    d["cache_dir"] = to_absolute_path(d["cache_dir"])
    cls = MQARDataModule if d.get("source") == "mqar" else CorpusDataModule
    try:
        dm = cls(**d, seed=int(cfg.seed), max_steps=max(1, max_steps_of(resolved(cfg))))
        if prepare:
            dm.prepare()
    except DataError as e:
        raise ConfigError(str(e)) from None
    return dm


# -- loggers ---------------------------------------------------------------------------------------
def wandb_mode(requested: str) -> str:
    """'auto' means online only when an API key is configured, so nothing ever prompts for one."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    netrc = Path.home() / ".netrc"
    if not has_key and netrc.exists():
        has_key = "api.wandb.ai" in netrc.read_text(errors="ignore")
    return "online" if has_key else "offline"


def make_loggers(cfg: DictConfig, run_dir: Path, name: str, run_id: str, config: dict) -> list:
    kind = cfg.logger.kind
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return [CSVLogger(save_dir=str(run_dir), name="", version="csv")]
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        mode = wandb_mode(cfg.logger.mode)
        if mode == "offline":
            log.info("wandb: no API key, logging offline; upload later with `wandb sync %s/wandb/offline-run-*`", run_dir)
        os.environ.setdefault("WANDB_SILENT", "true")
        logger = WandbLogger(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=cfg.sweep,
            name=name,
            job_type="train",
            tags=list(cfg.logger.tags),
            config={**config, "run_id": run_id},
            save_dir=str(run_dir),
            mode=mode,
        )
        # Lightning passes anonymous=None to wandb.init, which warns that the setting has no effect.
        logger._wandb_init.pop("anonymous", None)
        return [logger]
    return []


def finish_wandb(loggers: list, row: dict | None) -> None:
    """Always close the wandb run: otherwise the next in-process sweep job logs into the same run."""
    for lg in loggers:
        if lg.__class__.__name__ == "WandbLogger":
            import wandb

            if row is not None and wandb.run is not None:
                wandb.run.summary.update({k: v for k, v in row.items() if k != "config" and v is not None})
            wandb.finish()


# -- the run ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock across processes (parallel jobs sharing one MHA parent wait for it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def initial_weights(cfg: DictConfig, module: LMModule) -> str | None:
    """Load converted weights into `module` for non-scratch runs; returns the parent's run id or path."""
    from gqa_sweep.convert import convert_model, load_source

    init, G = cfg.init, resolved(cfg)["model"]["n_kv_heads"]  # one G, or one per layer
    if init.checkpoint is not None:
        try:
            (parent, _), parent_id = load_source(to_absolute_path(init.checkpoint)), str(init.checkpoint)
        except ValueError as e:  # CheckpointError: not a model, unreadable
            raise ConfigError(f"init.checkpoint: {e}") from None
    else:
        parent_cfg = copy.deepcopy(cfg)
        with open_dict(parent_cfg):
            parent_cfg.model.n_kv_heads = parent_cfg.model.n_heads
            parent_cfg.trainer.max_steps = int(init.parent_steps)
            parent_cfg.init = {"method": "scratch", "checkpoint": None, "parent_steps": None, "alpha": None}
            parent_cfg.force = False
        parent_id = run_id_of(resolved(parent_cfg))
        model_pt = results_dir(cfg) / "runs" / parent_id / "model.pt"
        with file_lock(results_dir(cfg) / "locks" / f"{parent_id}.lock"):
            if not model_pt.exists():
                log.info("training the MHA parent %s (%d steps) for conversion", parent_id, init.parent_steps)
                run(parent_cfg)
        parent, _ = load_model(model_pt)
    try:
        converted = convert_model(parent, G, init.method, seed=int(cfg.seed))
    except ValueError as e:
        raise ConfigError(f"init: {e}") from None
    if converted.cfg.to_dict() != module.model.cfg.to_dict():
        raise ConfigError(
            f"the parent model's shape does not match this run's model config: parent "
            f"{converted.cfg.to_dict()} vs run {module.model.cfg.to_dict()}; set model.* to the parent's shape"
        )
    module.model.load_state_dict(converted.state_dict())
    return parent_id


def show_bar(progress: str) -> bool:
    """progress=auto draws the step bar only on a terminal: logs and CI get one line per run."""
    return progress == "bar" or (progress == "auto" and sys.stderr.isatty())


def announce_run(cfg: DictConfig, name: str, run_id: str) -> None:
    """The sweep-level line: `run 3/12: H8-G2-s1 (id)`, so a long sweep shows where it is."""
    from hydra.core.hydra_config import HydraConfig

    where = ""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN and os.environ.get(TOTAL_ENV):
        where = f" {HydraConfig.get().job.num + 1}/{os.environ[TOTAL_ENV]}"
    log.info("run%s: %s (%s), %d steps -> %s", where, name, run_id, max_steps_of(resolved(cfg)), results_dir(cfg))


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
    parts.append(f"{row['decode_tokens_per_s']:,.0f} decode tok/s")
    if row.get("diverged_step") is not None:
        parts.append(f"diverged at step {row['diverged_step']}")
    return " | ".join(parts)


def resolve_precision(cfg: DictConfig) -> None:
    """`trainer.precision=auto`: bf16-mixed where the device computes bf16 natively, else 32-true with a note.
    The run's config.yaml and row record the precision used; the run id keeps `auto`."""
    if str(cfg.trainer.precision) != "auto":
        return
    native, why = native_bf16(str(cfg.trainer.accelerator))
    if not native:
        log.info("trainer.precision=auto: %s: training in fp32 (32-true)", why)
    with open_dict(cfg):
        cfg.trainer.precision = "bf16-mixed" if native else "32-true"


def run(cfg: DictConfig) -> dict:
    """Train one model and write its row; returns the row (or the stored one when skipped)."""
    validate(cfg)
    config = resolved(cfg)
    store = ResultsStore(results_dir(cfg))
    run_id, name = run_id_of(config), run_name(config)
    status = store.status(run_id)
    if status in ("completed", "diverged") and not cfg.force:
        log.info("skip %s (%s): already %s in %s; force=true reruns it", name, run_id, status, store.path)
        return store.get(run_id)
    announce_run(cfg, name, run_id)
    resolve_precision(cfg)

    started_at, t0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.perf_counter()
    if cfg.trainer.num_threads:
        torch.set_num_threads(int(cfg.trainer.num_threads))
    L.seed_everything(int(cfg.seed), verbose=False)
    dm = make_datamodule(cfg)
    steps = max_steps_of(config)
    B, T = int(cfg.data.batch_size), int(cfg.data.block_size)
    optim = dict(config["optim"])
    optim["warmup_steps"] = min(optim["warmup_steps"], max(1, steps // 5))
    module = LMModule(
        model_config(config, dm.vocab_size_actual), max_steps=max(1, steps), compile=bool(cfg.trainer.compile), **optim
    )
    parent_id = initial_weights(cfg, module) if cfg.init.method != "scratch" else None

    run_dir = results_dir(cfg) / "runs" / run_id
    if cfg.force and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    if getattr(dm, "tokenizer", None) is not None:  # text runs; MQAR's ids are synthetic, with no text
        hf_tokenizer(dm.tokenizer).save(str(run_dir / "tokenizer.json"))  # gqa-export ships it with the model
    ckpt = run_dir / "last.ckpt"
    metrics = RunMetrics(
        tokens_per_step=B * T,
        divergence_loss=cfg.metrics.divergence_factor * math.log(dm.vocab_size_actual),
        spike_window=cfg.metrics.spike_window,
        spike_k=cfg.metrics.spike_k,
        attn_logit_every=cfg.metrics.attn_logit_every,
        throughput_warmup=min(int(cfg.metrics.throughput_warmup), steps // 2),  # short uptraining runs too
    )
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = [
        metrics,
        *([StepProgress(name, steps, B * T)] if show_bar(str(cfg.progress)) else []),
        ModelCheckpoint(
            dirpath=str(run_dir),
            save_top_k=0,
            save_last=True,
            every_n_train_steps=int(cfg.trainer.ckpt_every_n_steps),
        ),
    ]
    loggers = make_loggers(cfg, run_dir, name, run_id, config)
    tkw = {k: v for k, v in config["trainer"].items() if k not in OWN_TRAINER_KEYS}
    tkw["precision"] = cfg.trainer.precision  # `auto` resolved
    tkw["max_steps"] = max(1, steps)
    tkw["val_check_interval"] = min(int(tkw["val_check_interval"]), max(1, steps))
    trainer = L.Trainer(
        **tkw,
        callbacks=callbacks,
        logger=loggers or False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    row = None
    base = {
        "run_id": run_id,
        "run_name": name,
        "sweep": cfg.sweep,
        "model_name": cfg.model.name,
        "n_heads": cfg.model.n_heads,
        "n_kv_heads": module.model.cfg.n_kv_heads if module.model.cfg.uniform else None,
        "kv_layout": module.model.cfg.kv_layout,
        "group_size": module.model.cfg.group_size,
        "n_layers": cfg.model.n_layers,
        "d_model": cfg.model.d_model,
        "d_head": module.model.cfg.d_head,
        "d_ff": module.model.cfg.d_ff,
        "param_match": cfg.model.get("param_match", "none"),
        "vocab_size": dm.vocab_size_actual,
        "n_params": module.model.num_params(),
        "n_params_non_embedding": module.model.num_params(non_embedding=True),
        "seed": cfg.seed,
        "lr": cfg.optim.lr,
        "batch_size": B,
        "block_size": T,
        "max_steps": steps,
        "data_name": dm.name,
        "tokenizer": dm.tokenizer_label,
        "precision": str(cfg.trainer.precision),
        "sdpa_backend": cfg.model.sdpa_backend,
        "qk_norm": bool(cfg.model.qk_norm),
        "z_loss": float(cfg.optim.z_loss),
        "init": "scratch" if cfg.init.method == "scratch" else f"mha_{cfg.init.method}",
        "alpha": cfg.init.alpha,
        "parent_run_id": parent_id,
        "torch_version": torch.__version__,
        "host": socket.gethostname(),
        "config": config,
        "started_at": started_at,
    }
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*The number of training batches.*")
            if steps > 0:
                trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt.exists() else None)
            summary = metrics.summary(trainer.strategy.root_device)
            diverged = summary["diverged_step"] is not None
            val_loss = math.nan
            if not diverged:
                val_loss = trainer.validate(module, datamodule=dm, verbose=False)[0]["val_loss"]
        row = {**base, **summary, **finish_measurements(cfg, module, dm, trainer, summary)}
        if not diverged:  # loss by position bucket; MQAR: recall accuracy overall and per test segment
            row.update(module.val_stats.row(getattr(dm, "test_segments", None)))
        row.update(
            status="diverged" if diverged else "completed",
            val_loss=val_loss,
            val_ppl=math.exp(val_loss) if math.isfinite(val_loss) and val_loss < 700 else math.nan,
            tokens_seen=(summary["diverged_step"] or steps) * B * T * trainer.world_size,
            wall_s=time.perf_counter() - t0,
            finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        if trainer.is_global_zero:
            if not diverged:
                save_model(module.model, run_dir / "model.pt", meta={"run_id": run_id, "steps": steps})
            store.write_run(row, metrics.history)
            ckpt.unlink(missing_ok=True)  # the run is recorded; model.pt keeps the weights
            log.info("%s", run_line(name, run_id, row))
        return row
    except Exception as e:
        if trainer.is_global_zero:
            failed = {
                **base,
                **metrics.summary(trainer.strategy.root_device),
                "status": "failed",
                "error": f"{e.__class__.__name__}: {e}\n{traceback.format_exc(limit=8)}",
                "wall_s": time.perf_counter() - t0,
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            store.write_run(failed, metrics.history)
            log.error("%s %s failed: %s: %s (recorded in %s)", name, run_id, e.__class__.__name__, e, store.path)
        raise
    finally:
        finish_wandb(loggers, row)


def decode_plan(cfg: DictConfig) -> tuple[int, int, int]:
    """(batch, prompt, new tokens) of the per-run decode; the cache ends holding prompt + new tokens.

    New tokens are capped at half the block, so the default 64 also fits a short block (e.g. MQAR's 64).
    metrics.decode_fill_cache=true grows the prompt so the cache ends full (block_size tokens): the
    cache-bound setting where fewer KV heads pay off; otherwise the prompt is metrics.decode_prompt_tokens.
    """
    block, m = int(cfg.data.block_size), cfg.metrics
    new = min(int(m.decode_new_tokens), max(1, block // 2))
    prompt = block - new if m.get("decode_fill_cache", False) else min(int(m.decode_prompt_tokens), block - new)
    return int(m.decode_batch), prompt, new


def finish_measurements(cfg: DictConfig, module: LMModule, dm, trainer, summary: dict) -> dict:
    """Per-run numbers taken after training: FLOPs, MFU, KV bytes, decode speed."""
    device = trainer.strategy.root_device
    model = module.model
    dtype = precision_dtype(cfg.trainer.precision)
    kv_dtype = dtype if dtype in ("bf16", "fp16") else "fp32"
    fpt = flops_per_token(model, int(cfg.data.block_size))
    name = device_name(device)
    peak, peak_source = device_peak(device, dtype)
    out = {
        "device": name,
        "flops_per_token": fpt,
        "model_flops_per_s": summary["train_tokens_per_s"] * fpt,
        "mfu": summary["train_tokens_per_s"] * fpt / peak,
        "peak_flops": peak,
        "peak_source": peak_source,
        "kv_dtype": kv_dtype,
        "kv_bytes_per_token": model.cfg.kv_bytes_per_token(int(DTYPE_BYTES[kv_dtype])),
        "decode_tokens_per_s": math.nan,
        "decode_batch": decode_plan(cfg)[0],
        "decode_context": sum(decode_plan(cfg)[1:]),
    }
    if summary["diverged_step"] is None and trainer.is_global_zero:
        # Decode as it would be served: weights and cache in the training compute dtype.
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[kv_dtype]
        infer = copy.deepcopy(model).to(device=device, dtype=torch_dtype)
        batch, prompt_tokens, new = decode_plan(cfg)
        prompt = dm.sample_prompt(batch, prompt_tokens).to(device)
        out["decode_tokens_per_s"] = decode_tokens_per_s(infer, prompt, new)
    return out


def cli() -> None:
    """The console script of installs made before `gqa_sweep.cli` existed: same as `gqa-sweep`."""
    from gqa_sweep.cli import cli as gqa_sweep_cli

    gqa_sweep_cli()

"""`gqa-sweep`: the Hydra entry point. One run = one model at one G = one row in the results store.

Flow: config -> validate (before anything is trained or written) -> data -> model -> Lightning Trainer
with the RunMetrics callback -> final validation and decode speed -> one row + history in the store.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.errors import CompactHydraException
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf, open_dict

from gqa_sweep.callbacks import RunMetrics
from gqa_sweep.checkpoint import load_model, save_model
from gqa_sweep.metrics import (
    decode_tokens_per_s,
    device_name,
    flops_per_token,
    peak_flops,
    precision_dtype,
)
from gqa_sweep.kv import DTYPE_BYTES
from gqa_sweep.model import ModelConfig, divisors
from gqa_sweep.module import LMModule
from gqa_sweep.results import ResultsStore, StoreError

log = logging.getLogger("gqa_sweep")

# Keys that change where or how a run is reported, not what it computes: left out of the run's identity.
IDENTITY_EXCLUDE = (
    "results_dir",
    "force",
    "logger",
    "data.cache_dir",
    "data.num_workers",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.num_threads",
)
INIT_METHODS = ("scratch", "mean", "first", "random")
OWN_TRAINER_KEYS = ("ckpt_every_n_steps", "compile", "num_threads")


class ConfigError(CompactHydraException, ValueError):
    """Bad input, reported in one line before any training (Hydra prints compact errors as-is)."""


# -- configuration ---------------------------------------------------------------------------------
def resolved(cfg: DictConfig) -> dict:
    """The run's resolved config as plain data, without Hydra's own node."""
    d = OmegaConf.to_container(cfg, resolve=False)
    d.pop("hydra", None)  # resolving it needs a running Hydra job; it is not part of the run anyway
    return OmegaConf.to_container(OmegaConf.create(d), resolve=True)


def run_id_of(cfg: dict) -> str:
    """A hash of the resolved config minus output/logging keys: the same experiment, the same id."""
    ident = copy.deepcopy(cfg)
    for key in IDENTITY_EXCLUDE:
        *parents, leaf = key.split(".")
        node = ident
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_name(cfg: dict) -> str:
    m = cfg["model"]
    name = f"H{m['n_heads']}-G{m['n_kv_heads']}-s{cfg['seed']}"
    if cfg["init"]["method"] != "scratch" or cfg["init"].get("alpha") is not None:
        name += f"-{cfg['init']['method']}"
    if cfg["init"].get("alpha") is not None:
        name += f"-a{cfg['init']['alpha']}"
    return name


def model_config(cfg: dict, vocab_size: int) -> dict:
    m = {k: v for k, v in cfg["model"].items() if k != "name"}
    return {**m, "vocab_size": vocab_size}


def max_steps_of(cfg: dict) -> int:
    """Steps to train; an uptraining run (init.alpha set) derives them from the parent's S steps."""
    init, steps = cfg["init"], cfg["trainer"]["max_steps"]
    if init.get("alpha") is None:
        return steps
    S, alpha = init["parent_steps"], init["alpha"]
    return round((1 + alpha) * S) if init["method"] == "scratch" else round(alpha * S)


def validate(cfg: DictConfig) -> None:
    """Every check that needs no data: raise ConfigError naming the fix."""
    m = cfg.model
    if str(m.n_kv_heads) == "all":
        raise ConfigError(
            f"model.n_kv_heads=all expands to a sweep over {', '.join(map(str, divisors(int(m.n_heads))))}; "
            "run it with -m (gqa-sweep -m model.n_kv_heads=all)"
        )
    try:
        ModelConfig(**model_config(resolved(cfg), vocab_size=256))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model: {e}") from None
    lr = cfg.optim.lr
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"optim.lr={lr} must be a finite positive number, e.g. optim.lr=3e-3")
    if not isinstance(cfg.trainer.max_steps, int) or cfg.trainer.max_steps <= 0:
        raise ConfigError(f"trainer.max_steps={cfg.trainer.max_steps} must be a positive integer")
    init = cfg.init
    if init.method not in INIT_METHODS:
        raise ConfigError(f"init.method={init.method!r}; choose from {', '.join(INIT_METHODS)}")
    if init.method != "scratch" and init.checkpoint is None and not init.parent_steps:
        raise ConfigError(f"init.method={init.method} needs init.checkpoint=PATH or init.parent_steps=S")
    if init.checkpoint is not None and init.method == "scratch":
        raise ConfigError("init.checkpoint is converted, not trained from scratch; add init.method=mean|first|random")
    if init.checkpoint is not None and not Path(to_absolute_path(init.checkpoint)).exists():
        raise ConfigError(f"init.checkpoint={init.checkpoint} does not exist; pass a model.pt, .ckpt or HF Llama dir")
    if init.alpha is not None and (not init.parent_steps or init.alpha < 0):
        raise ConfigError("init.alpha needs init.parent_steps=S (steps of the MHA parent) and alpha >= 0")
    if cfg.logger.kind not in ("none", "csv", "wandb"):
        raise ConfigError(f"logger.kind={cfg.logger.kind!r}; choose logger=none, logger=csv or logger=wandb")
    if cfg.data.source == "mqar":  # its constraints are pure config: check them before the store is created
        make_datamodule(cfg, prepare=False)
    try:
        ResultsStore(results_dir(cfg)).check_writable()
    except StoreError as e:
        raise ConfigError(str(e)) from None


def results_dir(cfg: DictConfig) -> Path:
    return Path(to_absolute_path(str(cfg.results_dir)))


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
        return [
            WandbLogger(
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
        ]
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

    init, G = cfg.init, int(cfg.model.n_kv_heads)
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
        ModelCheckpoint(
            dirpath=str(run_dir),
            save_top_k=0,
            save_last=True,
            every_n_train_steps=int(cfg.trainer.ckpt_every_n_steps),
        ),
    ]
    loggers = make_loggers(cfg, run_dir, name, run_id, config)
    tkw = {k: v for k, v in config["trainer"].items() if k not in OWN_TRAINER_KEYS}
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
        "sweep": cfg.sweep,
        "model_name": cfg.model.name,
        "n_heads": cfg.model.n_heads,
        "n_kv_heads": cfg.model.n_kv_heads,
        "group_size": module.model.cfg.group_size,
        "n_layers": cfg.model.n_layers,
        "d_model": cfg.model.d_model,
        "d_head": module.model.cfg.d_head,
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
            log.info(
                "%s %s %s: val_loss %.4f ppl %.3f | %.0f train tok/s | %.0f decode tok/s | %s",
                name, run_id, row["status"], val_loss, row["val_ppl"], row["train_tokens_per_s"],
                row["decode_tokens_per_s"], f"diverged at step {row['diverged_step']}" if diverged else "",
            )
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


def finish_measurements(cfg: DictConfig, module: LMModule, dm, trainer, summary: dict) -> dict:
    """Per-run numbers taken after training: FLOPs, MFU, KV bytes, decode speed."""
    device = trainer.strategy.root_device
    model = module.model
    dtype = precision_dtype(cfg.trainer.precision)
    kv_dtype = dtype if dtype in ("bf16", "fp16") else "fp32"
    fpt = flops_per_token(model, int(cfg.data.block_size))
    name = device_name(device)
    out = {
        "device": name,
        "flops_per_token": fpt,
        "model_flops_per_s": summary["train_tokens_per_s"] * fpt,
        "mfu": summary["train_tokens_per_s"] * fpt / peak_flops(name, dtype),
        "kv_dtype": kv_dtype,
        "kv_bytes_per_token": model.cfg.kv_bytes_per_token(int(DTYPE_BYTES[kv_dtype])),
        "decode_tokens_per_s": math.nan,
    }
    if summary["diverged_step"] is None and trainer.is_global_zero:
        # Decode as it would be served: weights and cache in the training compute dtype.
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[kv_dtype]
        infer = copy.deepcopy(model).to(device=device, dtype=torch_dtype)
        prompt = dm.sample_prompt(int(cfg.metrics.decode_batch), int(cfg.metrics.decode_prompt_tokens)).to(device)
        out["decode_tokens_per_s"] = decode_tokens_per_s(infer, prompt, int(cfg.metrics.decode_new_tokens))
    return out


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    for noisy in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*treespec, LeafSpec.*")  # lightning vs torch 2.13 pytree deprecation
    run(cfg)


def cli() -> None:
    main()


if __name__ == "__main__":
    cli()

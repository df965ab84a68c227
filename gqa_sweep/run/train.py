"""`run(cfg)`: train one model at one G and write its row. The function reads as the run's steps; each step
is a function of its own in this package (build, weights, trainer, loggers, measure, row)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from hydra.types import RunMode
from omegaconf import DictConfig

from gqa_sweep.data.spec import REPEAT_WARN_EPOCHS
from gqa_sweep.plan import TOTAL_ENV, RunPlan, eta_line, plan_job, plan_spec
from gqa_sweep.run.build import build_data, build_module, build_run_dir, seed_and_threads
from gqa_sweep.run.fit import warn_if_unfit
from gqa_sweep.run.loggers import build_loggers, finish_wandb
from gqa_sweep.run.measure import measure
from gqa_sweep.run.oom import device_total, where_failed
from gqa_sweep.run.row import Clock, describe_run, failed_row, finished_row, run_line
from gqa_sweep.run.trainer import build_metrics, build_trainer
from gqa_sweep.run.weights import initial_weights
from gqa_sweep.spec import RunSpec
from gqa_sweep.train.checkpoint import save_model

log = logging.getLogger("gqa_sweep")


def run(cfg: DictConfig) -> dict:
    """Train one model and write its row; returns the row (or the stored one when skipped)."""
    return run_plan(plan_job(cfg))


def run_spec(spec: RunSpec) -> dict:
    """Run a spec built by the planner (an uptraining run's MHA parent)."""
    return run_plan(plan_spec(spec))


def run_plan(plan: RunPlan) -> dict:
    spec = plan.spec
    if plan.skip:
        log.info("skip %s (%s): already %s in %s; force=true reruns it", plan.name, plan.stored_id, plan.status,
                 plan.store.path)
        plan.store.add_sweep(plan.stored_id, spec.sweep)
        return plan.store.get(plan.stored_id)
    announce_run(plan)
    clock = Clock()
    seed_and_threads(spec)
    dm = build_data(spec)
    module = build_module(spec, dm)
    parent_id = initial_weights(spec, module, train_parent=run_spec) if spec.init.method != "scratch" else None
    run_dir = build_run_dir(spec, dm)
    metrics = build_metrics(spec, dm.vocab_size_actual)
    loggers = build_loggers(spec, run_dir)
    trainer = build_trainer(spec, run_dir, metrics, loggers)
    warn_if_unfit(module, spec, trainer.strategy.root_device)
    base = describe_run(spec, module, dm, parent_id, clock)
    row = None
    try:
        summary, val_loss = train_and_validate(trainer, module, dm, metrics, run_dir / "last.ckpt", spec.max_steps)
        row = finished_row(base, summary, measure(spec, module, dm, trainer, summary), val_loss, module, dm, trainer,
                           clock)
        if trainer.is_global_zero:
            record_run(plan, row, metrics, module, run_dir)
        return row
    except Exception as e:
        if trainer.is_global_zero:
            failed = failed_row(base, metrics.summary(trainer.strategy.root_device), e, clock)
            failed |= where_failed(failed, metrics.failed_at, e, device_total(trainer.strategy.root_device))
            plan.store.write_run(failed, metrics.history)
            log.error("%s %s failed: %s (recorded in %s)", plan.name, plan.run_id, failed["error"].splitlines()[0],
                      plan.store.path)
        raise
    finally:
        finish_wandb(loggers, row)


def announce_run(plan: RunPlan) -> None:
    """The sweep-level line: `run 3/12: H8-G2-s1 (id)`, so a long sweep shows where it is."""
    from hydra.core.hydra_config import HydraConfig

    where = ""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN and os.environ.get(TOTAL_ENV):
        where = f" {HydraConfig.get().job.num + 1}/{os.environ[TOTAL_ENV]}"
    log.info("run%s: %s (%s), %d steps -> %s", where, plan.name, plan.run_id, plan.spec.max_steps,
             plan.results_dir)
    if plan.spec.lr_note:
        log.info("optim.lr=transfer: %s", plan.spec.lr_note)
    if plan.spec.trainer.precision_note:
        log.info("trainer.precision=auto: %s: training in fp32 (32-true)", plan.spec.trainer.precision_note)


def train_and_validate(trainer, module, dm, metrics, ckpt: Path, steps: int) -> tuple[dict, float]:
    """Fit (resuming from `ckpt` after a crash), then one final validation unless the run diverged."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*The number of training batches.*")
        if steps > 0:  # an uptraining run with alpha = 0 only validates its converted weights
            trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt.exists() else None)
        summary = metrics.summary(trainer.strategy.root_device)
        val_loss = float("nan")
        if summary["diverged_step"] is None:
            val_loss = trainer.validate(module, datamodule=dm, verbose=False)[0]["val_loss"]
    return summary, val_loss


def record_run(plan: RunPlan, row: dict, metrics, module, run_dir: Path) -> None:
    """The row and history in one transaction; the weights kept as model.pt, the resume checkpoint dropped."""
    if row["status"] != "diverged":
        save_model(module.model, run_dir / "model.pt", meta={"run_id": plan.run_id, "steps": row["max_steps"]})
    plan.store.write_run(row, metrics.history, replaces=plan.stored_id)
    (run_dir / "last.ckpt").unlink(missing_ok=True)  # the run is recorded; model.pt keeps the weights
    log.info("%s", run_line(plan.name, plan.run_id, row))
    if row.get("contended") and row.get("gpu_others"):
        log.warning("%s shared its GPU with %d other process(es): its throughput is not comparable; rerun it on a "
                    "free GPU with force=true", plan.name, row["gpu_others"])
    elif row.get("contended"):
        log.warning("%s was contended (CPU util %.0f %%, load %.1f-%.1f on %d cores): its throughput is not "
                    "comparable; rerun it on a quiet machine with force=true", plan.name, 100 * row["cpu_util"],
                    row["load_start"], row["load_end"], os.cpu_count() or 1)
    if (row.get("epochs") or 0) > REPEAT_WARN_EPOCHS:
        log.warning("%s read its train split %.1f times (tokens_seen / data_train_tokens): the data repeated; "
                    "a larger corpus or fewer steps keeps every token new", plan.name, row["epochs"])
    eta = eta_line(plan.store)
    if eta:
        log.info("%s", eta)

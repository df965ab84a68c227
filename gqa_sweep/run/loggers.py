"""The run's loggers: CSV, or wandb (offline unless an API key is configured, so it never prompts)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from gqa_sweep.spec import RunSpec

log = logging.getLogger("gqa_sweep")


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


def build_loggers(spec: RunSpec, run_dir: Path) -> list:
    logger = spec.logger
    kind = logger["kind"]
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return [CSVLogger(save_dir=str(run_dir), name="", version="csv")]
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        mode = wandb_mode(logger["mode"])
        if mode == "offline":
            log.info("wandb: no API key, logging offline; upload later with `wandb sync %s/wandb/offline-run-*`",
                     run_dir)
        os.environ.setdefault("WANDB_SILENT", "true")
        logger = WandbLogger(
            project=logger["project"],
            entity=logger["entity"],
            group=spec.sweep,
            name=spec.name,
            job_type="train",
            tags=list(logger["tags"]),
            config={**spec.config, "run_id": spec.run_id},
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

"""Plan a run before anything heavy loads: check every input, name the run, look it up in the store.

Torch-free on purpose: the sweeper plans every job of a sweep with it before any is trained (bad input fails
in about a second), and each job plans itself again when it starts (the store may have changed meanwhile).
Both sides import it, so the sweep never imports the run and the run never imports the sweep.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from omegaconf import DictConfig

from gqa_sweep.config import ConfigError, max_steps_of, resolved, results_dir, run_id_of, run_name, validate
from gqa_sweep.data.common import DataError
from gqa_sweep.data.mqar import check_mqar, mqar_spec
from gqa_sweep.results import ResultsStore, StoreError

TOTAL_ENV = "GQA_SWEEP_JOBS"  # jobs this sweep launches: read by each job for its `run i/N` line
DONE = ("completed", "diverged")  # a run in one of these states is not trained again unless force=true


@dataclass
class RunPlan:
    """What a sweep (or a single run) will do with one job."""

    cfg: DictConfig
    config: dict  # the resolved config as planned (precision still as given: the run id keeps `auto`)
    overrides: list[str] | None
    run_id: str
    name: str
    results_dir: str
    status: str | None  # the run's status in the store, None if it is not there

    @property
    def skip(self) -> bool:
        return self.status in DONE and not self.cfg.force

    @property
    def store(self) -> ResultsStore:
        return ResultsStore(self.results_dir)


def check_inputs(cfg: DictConfig) -> None:
    """Every check that needs neither torch nor data on disk; raises ConfigError naming the fix."""
    validate(cfg)
    if cfg.data.get("source") == "mqar":  # the generator's constraints are pure config
        d = resolved(cfg)["data"]
        try:
            check_mqar(mqar_spec(**d), int(d["block_size"]), int(d["batch_size"]), max(1, max_steps_of(resolved(cfg))))
        except DataError as e:
            raise ConfigError(str(e)) from None
    try:
        ResultsStore(results_dir(cfg)).check_writable()
    except StoreError as e:
        raise ConfigError(str(e)) from None


def plan_job(cfg: DictConfig, overrides: list[str] | None = None) -> RunPlan:
    """Check one job and look it up in the store."""
    check_inputs(cfg)
    config = resolved(cfg)
    run_id, rdir = run_id_of(config), results_dir(cfg)
    return RunPlan(cfg, config, overrides, run_id, run_name(config), str(rdir), ResultsStore(rdir).status(run_id))


def announce_jobs(n: int) -> None:
    os.environ[TOTAL_ENV] = str(n)  # inherited by joblib / submitit job processes

"""Hydra sweeper for G sweeps: Hydra's basic sweeper plus what it cannot do.

1. `model.n_kv_heads=all` expands, per job, to every divisor of that job's n_heads (so `model.n_heads=8,12`
   with `all` gives 4 + 6 jobs, never an invalid pair).
2. Every job's config is validated before anything is prepared or written, so bad input fails in about
   a second; then `preview=true` lists the jobs and stops, jobs already in the store are skipped (a sweep
   with nothing left to run creates no output dir), and each dataset is prepared once.
3. A sweep parameter set to null is dropped (an experiment removes the default `model.n_kv_heads: all`).
4. After the sweep, one summary table of the jobs' rows is printed from the results store.
"""


import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.types import Override

log = logging.getLogger(__name__)


@dataclass
class GQASweeperConf:
    _target_: str = "hydra_plugins.gqa_sweeper.gqa_sweeper.GQASweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, Optional[str]]] = None  # null drops a sweep parameter (see 3. above)


ConfigStore.instance().store(group="hydra/sweeper", name="gqa", node=GQASweeperConf, provider="gqa_sweep")


class _NothingToRun(Exception):
    """Every job is already in the store (or only previewed): skip Hydra's launch and its output dir."""


class GQASweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None) -> None:
        # A key set to null drops an inherited sweep dimension: an experiment that sets the KV heads itself
        # (experiment=kv_budget) writes `model.n_kv_heads: null` to turn off the default `all`.
        params = {k: v for k, v in (params or {}).items() if v is not None} or None
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.jobs: List[Dict[str, Any]] = []

    def split_arguments(self, overrides: List[Override], max_batch_size: Optional[int]) -> List[List[List[str]]]:
        from gqa_sweep import sweep
        from gqa_sweep.config import ConfigError
        from gqa_sweep.plan import announce_jobs

        (jobs,) = BasicSweeper.split_arguments(overrides, None)
        try:
            plans = sweep.plan_sweep(jobs, self._job_config)
            if plans and plans[0].preview:
                sweep.print_preview(plans)
                raise _NothingToRun
            sweep.print_skips(plans)
            sweep.label_reused(plans)
            todo = [p for p in plans if not p.skip]
            sweep.prepare_data(todo)
        except ConfigError as e:
            sweep.exit_with(e)
        self.jobs = plans
        if not todo:
            raise _NothingToRun
        announce_jobs(todo)
        to_run = [p.overrides for p in todo]
        n = max_batch_size or len(to_run)
        return [to_run[i : i + n] for i in range(0, len(to_run), n)]

    def _job_config(self, overrides: List[str]):
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    def sweep(self, arguments: List[str]) -> Any:
        from gqa_sweep.sweep import print_summary

        try:
            return super().sweep(arguments)
        except _NothingToRun:
            return []
        finally:
            print_summary(self.jobs)

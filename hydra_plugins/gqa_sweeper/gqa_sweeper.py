"""Hydra sweeper for G sweeps: Hydra's basic sweeper plus three things it cannot do.

1. `model.n_kv_heads=all` expands, per job, to every divisor of that job's n_heads (so `model.n_heads=8,12`
   with `all` gives 4 + 6 jobs, never an invalid pair).
2. Every job's config is validated and its data prepared before the first job trains, so bad input fails
   in seconds and nothing already in the store is touched.
3. After the sweep, one summary table of the jobs' rows is printed from the results store.
"""


import logging
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.types import Override
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

log = logging.getLogger(__name__)
KV_KEY = "model.n_kv_heads"


@dataclass
class GQASweeperConf:
    _target_: str = "hydra_plugins.gqa_sweeper.gqa_sweeper.GQASweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="gqa", node=GQASweeperConf, provider="gqa_sweep")


class GQASweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.jobs: List[Dict[str, Any]] = []

    def split_arguments(self, overrides: List[Override], max_batch_size: Optional[int]) -> List[List[List[str]]]:
        from gqa_sweep.sweep import expand_and_validate
        from gqa_sweep.train import ConfigError

        (jobs,) = BasicSweeper.split_arguments(overrides, None)
        try:
            jobs, self.jobs = expand_and_validate(jobs, self._job_config)
        except ConfigError as e:  # one line, before any job ran, instead of Hydra's stack-trace hint
            print(e, file=sys.stderr)
            raise SystemExit(1) from None
        n = max_batch_size or len(jobs) or 1
        return [jobs[i : i + n] for i in range(0, len(jobs), n)]

    def _job_config(self, overrides: List[str]):
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    def sweep(self, arguments: List[str]) -> Any:
        from gqa_sweep.sweep import print_summary

        try:
            return super().sweep(arguments)
        finally:
            print_summary(self.jobs)

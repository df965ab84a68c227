"""Sweep-level steps run by the `gqa` Hydra sweeper before and after its jobs."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gqa_sweep.model import divisors
from gqa_sweep.results import load_runs
from gqa_sweep.train import ConfigError, make_datamodule, resolved, results_dir, run_id_of, run_name, validate

KV_KEY = "model.n_kv_heads"


def expand_all(jobs: list[list[str]], job_config: Callable[[list[str]], DictConfig]) -> list[list[str]]:
    """Replace `model.n_kv_heads=all` in each job by one job per divisor of that job's n_heads."""
    out = []
    for overrides in jobs:
        kv = [o for o in overrides if o.startswith(KV_KEY + "=")]
        if not kv or kv[-1].split("=", 1)[1].strip() != "all":
            out.append(overrides)
            continue
        rest = [o for o in overrides if not o.startswith(KV_KEY + "=")]
        n_heads = job_config(rest + [f"{KV_KEY}=1"]).model.n_heads
        if not isinstance(n_heads, int) or n_heads <= 0:
            raise ConfigError(f"model.n_heads={n_heads} must be a positive integer")
        out.extend(rest + [f"{KV_KEY}={g}"] for g in divisors(n_heads))
    return out


def expand_and_validate(
    jobs: list[list[str]], job_config: Callable[[list[str]], DictConfig]
) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """Expand `all`, validate every job and prepare each distinct dataset once, before any training."""
    jobs = expand_all(jobs, job_config)
    info, prepared = [], set()
    for overrides in jobs:
        cfg = job_config(overrides)
        validate(cfg)
        config = resolved(cfg)
        data_key = json.dumps(config["data"], sort_keys=True)
        if data_key not in prepared:  # tokenizes into the shared cache; jobs then load it
            make_datamodule(cfg)
            prepared.add(data_key)
        info.append({"run_id": run_id_of(config), "name": run_name(config), "results_dir": str(results_dir(cfg))})
    return jobs, info


def print_summary(jobs: list[dict[str, Any]]) -> None:
    """One line per job of this sweep, read back from the store (rows written by any process)."""
    if not jobs:
        return
    import pandas as pd

    def fmt(value: Any, spec: str) -> str:
        return "—" if value is None or pd.isna(value) else format(value, spec)

    lines = []
    dirs = list(dict.fromkeys(j["results_dir"] for j in jobs))
    for rdir in dirs:
        runs = load_runs(rdir).set_index("run_id")
        for j in (j for j in jobs if j["results_dir"] == rdir):
            r = runs.loc[j["run_id"]] if j["run_id"] in runs.index else None
            get = (lambda c: None) if r is None else r.get
            lines.append(
                {
                    "run": j["name"],
                    "run_id": j["run_id"],
                    "status": "missing" if r is None else r.status,
                    "val ppl": fmt(get("val_ppl"), ".3f"),
                    "train tok/s": fmt(get("train_tokens_per_s"), ",.0f"),
                    "decode tok/s": fmt(get("decode_tokens_per_s"), ",.0f"),
                    "KV bytes/token": fmt(get("kv_bytes_per_token"), ",.0f"),
                    "params": fmt(get("n_params"), ",.0f"),
                    "wall s": fmt(get("wall_s"), ".1f"),
                }
            )
    print(f"\n== sweep summary: {len(lines)} runs, store: {', '.join(dirs)} ==")
    print(pd.DataFrame(lines).to_markdown(index=False, stralign="right", disable_numparse=True))


class ValidateBeforeRun(Callback):
    """Hydra callback: a single run is validated, and its data prepared, before Hydra creates its output dir."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            validate(config)
            make_datamodule(config)  # tokenizes into the cache the run then loads
        except ConfigError as e:  # Hydra turns callback exceptions into warnings: exit here instead
            print(e, file=sys.stderr)
            raise SystemExit(1) from None

"""Sweep-level steps run by the `gqa` Hydra sweeper (and, for a single run, its callback) around the jobs.

Order matters: every job is planned first (gqa_sweep.plan: torch-free, nothing written), then the plan is
shown (`preview=true`) or the jobs already in the store are skipped, and only then is data prepared.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from gqa_sweep.config import ConfigError
from gqa_sweep.model.shape import divisors
from gqa_sweep.plan import RunPlan, plan_spec, spec_of, store_index
from gqa_sweep.preview import check_ladder_corpus, print_preview
from gqa_sweep.spec import data_key
from gqa_sweep.store.results import ResultsStore, load_runs

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
        n_heads = job_config([*rest, f"{KV_KEY}=1"]).model.n_heads
        if not isinstance(n_heads, int) or n_heads <= 0:
            raise ConfigError(f"model.n_heads={n_heads} must be a positive integer")
        out.extend([*rest, f"{KV_KEY}={g}"] for g in divisors(n_heads))
    return out


def plan_sweep(jobs: list[list[str]], job_config: Callable[[list[str]], DictConfig]) -> list[RunPlan]:
    """Expand `all` and plan every job before anything is prepared, trained or written (the store is
    indexed once per results dir, not once per job)."""
    plans, indexes = [], {}
    for overrides in expand_all(jobs, job_config):
        cfg = job_config(overrides)
        spec = spec_of(cfg)
        if spec.results_dir not in indexes:
            indexes[spec.results_dir] = store_index(ResultsStore(spec.results_dir))
        plans.append(plan_spec(spec, overrides, indexes[spec.results_dir], preview=bool(cfg.preview)))
    first: dict[tuple[str, str], int] = {}
    for i, p in enumerate(plans, 1):  # two spellings of one computation (param_match=ffn at G = H): trained once
        key = (p.results_dir, p.run_id)
        if key in first:
            p.same_as = first[key]
        else:
            first[key] = i
    return plans


def label_reused(plans: list[RunPlan]) -> None:
    """A run this sweep reuses (trained by another sweep) joins this sweep: its label in the store, and with
    logger=wandb a summary-only run in this sweep's wandb group (job_type `reused`)."""
    for p in plans:
        if p.skip and p.stored_id is not None:
            p.store.add_sweep(p.stored_id, p.spec.sweep)
            if p.spec.logger["kind"] == "wandb":
                log_reused_to_wandb(p)


def log_reused_to_wandb(plan: RunPlan) -> None:
    import wandb

    from gqa_sweep.run.loggers import wandb_mode

    row = plan.store.get(plan.stored_id) or {}
    logger, spec = plan.spec.logger, plan.spec
    wandb.init(project=logger["project"], entity=logger["entity"], group=spec.sweep, name=plan.name,
               job_type="reused", tags=list(logger["tags"]), config={**spec.config, "run_id": plan.stored_id},
               dir=plan.results_dir, mode=wandb_mode(logger["mode"]))
    wandb.run.summary.update({k: v for k, v in row.items() if k != "config" and v is not None and v == v})
    wandb.finish()


def prepare_data(plans: list[RunPlan]) -> None:
    """Tokenize each distinct dataset of the jobs to run once, into the shared cache the jobs then load; a size
    ladder whose corpus is smaller than its largest size's tokens is refused before any run (preview.py)."""
    from gqa_sweep.run.build import build_data  # heavy (torch): only once every job is known to be good

    prepared = set()
    for p in plans:
        key = data_key(p.spec)
        if key not in prepared:
            dm = build_data(p.spec)
            check_ladder_corpus([q for q in plans if data_key(q.spec) == key], getattr(dm, "train_tokens", None))
            prepared.add(key)


def print_skips(plans: list[RunPlan]) -> None:
    for p in plans:
        if p.same_as is not None:
            print(f"skip {p.name} ({p.run_id}): the same computation as job {p.same_as} of this sweep")
        elif p.skip:
            print(f"skip {p.name} ({p.stored_id}): already {p.status} in {p.results_dir}; force=true reruns it")


def print_summary(jobs: list[RunPlan]) -> None:
    """One line per job of this sweep, read back from the store (rows written by any process)."""
    if not jobs:
        return
    import pandas as pd

    def fmt(value: Any, spec: str) -> str:
        return "—" if value is None or pd.isna(value) else format(value, spec)

    lines, unmeasured = [], "not measured"
    dirs = list(dict.fromkeys(j.results_dir for j in jobs))
    for rdir in dirs:
        runs = load_runs(rdir).set_index("run_id")
        for j in (j for j in jobs if j.results_dir == rdir):
            r = runs.loc[j.stored_id or j.run_id] if (j.stored_id or j.run_id) in runs.index else None
            get = (lambda c: None) if r is None else r.get
            lines.append(
                {
                    "run": j.name,
                    "run_id": j.run_id,
                    "status": "missing" if r is None else r.status,
                    "val ppl": fmt(get("val_ppl"), ".3f"),
                    "train tok/s": unmeasured if r is not None and r.status == "completed"
                    and pd.isna(r.train_tokens_per_s) else fmt(get("train_tokens_per_s"), ",.0f"),
                    "decode tok/s": fmt(get("decode_tokens_per_s"), ",.0f"),
                    "KV bytes/token": fmt(get("kv_bytes_per_token"), ",.0f"),
                    "params": fmt(get("n_params"), ",.0f"),
                    "wall s": fmt(get("wall_s"), ".1f"),
                }
            )
    print(f"\n== sweep summary: {len(lines)} runs, store: {', '.join(dirs)} ==")
    print(pd.DataFrame(lines).to_markdown(index=False, stralign="right", disable_numparse=True))
    if any(line["train tok/s"] == unmeasured for line in lines):
        print("train tok/s not measured: the run ended before its first timed window "
              "(metrics.throughput_warmup steps, then windows of 10 steps)")


def exit_with(error: ConfigError) -> None:
    """One line on stderr, exit status 1 (instead of Hydra's stack-trace hint)."""
    print(error, file=sys.stderr)
    raise SystemExit(1) from None


class ValidateBeforeRun(Callback):
    """Hydra callback for a single run: validate, preview or skip, then prepare data, all before Hydra
    creates the run's output dir (so bad input and a run already done leave nothing behind)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            plan = plan_spec(spec_of(config), preview=bool(config.preview))
            if config.preview:
                print_preview([plan])
                raise SystemExit(0)
            if plan.skip:
                print_skips([plan])
                label_reused([plan])
                raise SystemExit(0)
            prepare_data([plan])
        except ConfigError as e:  # Hydra turns callback exceptions into warnings: exit here instead
            exit_with(e)

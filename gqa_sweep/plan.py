"""Plan a run before anything heavy loads: check every input, name the run, look it up in the store.

Torch-free on purpose: the sweeper plans every job of a sweep with it before any is trained (bad input fails
in about a second), and each job plans itself again when it starts (the store may have changed meanwhile).
Both sides import it, so the sweep never imports the run and the run never imports the sweep.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from gqa_sweep.config import ConfigError, normalised, run_id_of, validate
from gqa_sweep.data.common import DataError
from gqa_sweep.data.spec import CORPUS_ORDER, check_data
from gqa_sweep.model.shape import non_embedding_params
from gqa_sweep.scaling.lr_transfer import TRANSFER, transferred_lr
from gqa_sweep.spec import RunSpec, build_spec, max_steps_of, resolved
from gqa_sweep.store.results import ResultsStore, StoreError
from gqa_sweep.train.precision import resolve_precision

TOTAL_ENV = "GQA_SWEEP_JOBS"  # jobs this sweep launches: read by each job for its `run i/N` line
PLAN_ENV = "GQA_SWEEP_PLAN"  # the sweep's jobs (id, shape, steps, work) and start: each job's ETA line
DONE = ("completed", "diverged")  # a run in one of these states is not trained again unless force=true


@dataclass
class RunPlan:
    """What a sweep (or a single run) will do with one job."""

    spec: RunSpec
    overrides: list[str] | None
    status: str | None  # the run's status in the store, None if it is not there
    stored_id: str | None = None  # the id it is stored under: run_id, or the id an older version gave it
    same_as: int | None = None  # an earlier job of the same sweep computes the same run (its 1-based number)
    preview: bool = False

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def results_dir(self) -> str:
        return self.spec.results_dir

    @property
    def skip(self) -> bool:
        return self.same_as is not None or (self.status in DONE and not self.spec.force)

    @property
    def store(self) -> ResultsStore:
        return ResultsStore(self.results_dir)


def check_inputs(config: dict) -> None:
    """Every check that needs neither torch nor data prepared; raises ConfigError naming the fix."""
    validate(config)
    d = dict(config["data"])
    if d.get("path"):
        d["path"] = to_absolute_path(str(d["path"]))
    try:  # the data's torch-free checks: paths, tokenizer files, columns, MQAR's generator constraints
        check_data({**d, "max_steps": max(1, max_steps_of(config))})
    except DataError as e:
        raise ConfigError(str(e)) from None
    try:
        ResultsStore(to_absolute_path(str(config["results_dir"]))).check_writable()
    except StoreError as e:
        raise ConfigError(str(e)) from None


def planned_config(config: dict) -> tuple[dict, str]:
    """The run's computation as plain data: `trainer.precision=auto` resolved for this device, a corpus's batch
    order version added (data.spec.CORPUS_ORDER); and why `auto` fell back to fp32 ("" if it did not).
    build_spec normalises it; its hash is the run id. `optim.lr=transfer` is resolved by lr_note."""
    config = copy.deepcopy(config)
    trainer = config["trainer"]
    trainer["precision"], why = resolve_precision(trainer["precision"], trainer.get("accelerator", "cpu"))
    if config["data"].get("source") != "mqar":
        config["data"]["order"] = CORPUS_ORDER  # the batch order is part of what a corpus run computes
    return config, why


def lr_note(config: dict) -> str:
    """`optim.lr=transfer` replaced, in place, by its grid's best lr (scaling/lr_transfer.py); where it came from.
    A preview shows a job whose grid is not there yet (the note says what to run) instead of refusing it."""
    if config["optim"]["lr"] != TRANSFER:
        return ""
    try:
        config["optim"]["lr"], note = transferred_lr(config, to_absolute_path(str(config["results_dir"])))
    except ConfigError as e:
        if not config.get("preview"):
            raise
        return f"(not trainable yet) {e}"
    return note


def spec_of(cfg: DictConfig) -> RunSpec:
    """Check a job's config and build its spec: the one place Hydra's config is read."""
    config = resolved(cfg)
    check_inputs(config)
    planned, why = planned_config(config)
    note = lr_note(planned)
    return build_spec(planned, precision_note=why, lr_note=note)


def stored_identity(config_json: str | None, precision: str | None) -> str | None:
    """The run id this version gives a stored row's computation (rows of older versions were hashed with the
    sweep name and `auto` precision): its config with the precision it ran in, normalised."""
    if not config_json:
        return None
    try:
        config = json.loads(config_json)
        if precision:
            config["trainer"]["precision"] = precision
        return run_id_of(normalised(config))
    except (ValueError, KeyError, TypeError):
        return None


def store_index(store: ResultsStore) -> dict[str, tuple[str, str]]:
    """computation id -> (stored run id, status) over the whole store; a done row wins over a failed one."""
    index: dict[str, tuple[str, str]] = {}
    for run_id, status, config_json, precision in store.stored_runs():
        for ident in {run_id, stored_identity(config_json, precision)} - {None}:
            if ident not in index or (status in DONE and index[ident][1] not in DONE):
                index[ident] = (run_id, status)
    return index


def plan_job(cfg: DictConfig, overrides: list[str] | None = None,
             index: dict[str, tuple[str, str]] | None = None) -> RunPlan:
    """Check one job and find its computation in the store (under its id, or an older version's);
    `index` (store_index) saves a sweep from scanning the store once per job."""
    return plan_spec(spec_of(cfg), overrides, index, preview=bool(cfg.get("preview", False)))


def plan_spec(spec: RunSpec, overrides: list[str] | None = None,
              index: dict[str, tuple[str, str]] | None = None, preview: bool = False) -> RunPlan:
    store = ResultsStore(spec.results_dir)
    stored_id, status = spec.run_id, store.status(spec.run_id)
    if status is None:
        stored_id, status = (index if index is not None else store_index(store)).get(spec.run_id, (None, None))
    return RunPlan(spec, overrides, status, stored_id, preview=preview)


def job_cost(plan: RunPlan) -> tuple[str, int, float]:
    """(model shape, steps, work) of a job: the ETA scales runs of one shape by steps, across shapes by work
    (steps x tokens per step x non-embedding parameters, a FLOPs proxy)."""
    s = plan.spec
    m, steps = s.model, max(1, s.max_steps)
    shape = f"L{m.n_layers}-d{m.d_model}-H{m.n_heads}-T{s.data['block_size']}-B{s.data['batch_size']}"
    return shape, steps, float(steps) * s.tokens_per_step * non_embedding_params(s.model_at(256))


def announce_jobs(plans: list[RunPlan]) -> None:
    """What every job of the sweep reads back (inherited by joblib / submitit processes): how many jobs, for
    its `run i/N` line, and the whole plan with its start time, for the ETA line after each run."""
    os.environ[TOTAL_ENV] = str(len(plans))
    jobs = [[p.run_id, *job_cost(p)] for p in plans]
    os.environ[PLAN_ENV] = json.dumps({"t0": time.time(), "jobs": jobs})


def eta_line(store: ResultsStore) -> str | None:
    """`sweep: 3/12 runs done in 1m12s; about 3m36s of runs left`: the estimate takes each job left at the
    mean time per step of the finished runs of its shape, else at their time per unit of work."""
    try:
        plan = json.loads(os.environ[PLAN_ENV])
    except (KeyError, ValueError):
        return None
    since = datetime.fromtimestamp(plan["t0"], timezone.utc).isoformat(timespec="seconds")
    runs = {r["run_id"]: r for r in store.finished_since(since)}
    done = [(j, runs[j[0]]["wall_s"]) for j in plan["jobs"] if j[0] in runs and runs[j[0]]["wall_s"] is not None]
    if not done:
        return None
    per_step: dict[str, list[float]] = {}
    for (_, shape, steps, _), wall in done:
        per_step.setdefault(shape, []).append(wall / steps)
    per_work = sum(w for _, w in done) / max(sum(j[3] for j, _ in done), 1e-9)
    left = sum(
        steps * sum(per_step[shape]) / len(per_step[shape]) if shape in per_step else work * per_work
        for run_id, shape, steps, work in plan["jobs"]
        if run_id not in runs
    )
    spent = time.time() - plan["t0"]
    return (f"sweep: {len(done)}/{len(plan['jobs'])} runs done in {duration(spent)}; "
            f"about {duration(left)} of runs left (from the runs so far, per model shape)")


def duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"

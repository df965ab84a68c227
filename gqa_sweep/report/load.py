"""Loading runs for the report: the local results store or a wandb project."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pandas as pd

from gqa_sweep.report.groups import context_labels
from gqa_sweep.store.results import DB_NAME, RUN_COLUMNS, STATUSES, load_runs

DASH = "—"
METHODS = ("mha_mean", "mha_first", "mha_random", "scratch")
# The sweep config spells methods `mean|first|random`; the report labels them as the GQA paper does.
_METHOD_ALIASES = {"mean": "mha_mean", "first": "mha_first", "random": "mha_random"}
_NUMERIC = [c for c, t in RUN_COLUMNS.items() if t in ("INTEGER", "REAL")]
_WANDB_STATES = {"finished": "completed", "crashed": "failed", "failed": "failed"}
FORMATS = ("md", "latex", "csv")



class ReportError(ValueError):
    """Bad input to the report; `main` prints it as one line and exits with status 2."""


# --------------------------------------------------------------------------------------------- loading


def load_results(results_dir: str | Path) -> pd.DataFrame:
    """Every run in `results_dir`'s store; raises ReportError if the directory or the store is missing/empty."""
    d = Path(results_dir)
    if not d.is_dir():
        raise ReportError(
            f"results dir '{d}' does not exist; pass the results_dir a sweep wrote to "
            "(gqa-sweep -m results_dir=DIR), or --wandb ENTITY/PROJECT"
        )
    runs = load_runs(d)
    if runs.empty:
        why = "has no runs" if (d / DB_NAME).exists() else f"has no {DB_NAME}"
        raise ReportError(f"'{d}/' {why}; run a sweep first: gqa-sweep -m results_dir={d}")
    return runs


def load_wandb(path: str, timeout_s: int = 5) -> pd.DataFrame:
    """Runs of a wandb project as store rows: each run's summary holds the row columns, config the config."""
    if path.count("/") != 1 or not all(path.split("/")):
        raise ReportError(f"--wandb {path!r}: expected ENTITY/PROJECT, e.g. --wandb my-team/gqa-sweep")
    hint = "use the local results dir instead: gqa-report RESULTS_DIR"
    try:
        import wandb

        # wandb's own login chatter would break the one-line error contract.
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            # Api() would prompt for a key on a terminal; a report must fail fast instead.
            if not wandb.login(prompt=False, verify=False):
                raise ReportError(f"wandb could not be reached for {path!r} (no API key: set WANDB_API_KEY); {hint}")
            rows = [_wandb_row(r) for r in wandb.Api(timeout=timeout_s).runs(path)]
    except ReportError:
        raise
    except Exception as e:  # network, auth and "project not found" errors all mean: no wandb today
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        raise ReportError(f"wandb could not be reached for {path!r} ({type(e).__name__}: {first_line}); {hint}") from e
    rows = [r for r in rows if r.get("status") in STATUSES]  # runs still running have no result yet
    if not rows:
        raise ReportError(f"no finished runs in wandb project {path!r}; {hint}")
    df = pd.DataFrame(rows)
    return df.reindex(columns=list(RUN_COLUMNS) + [c for c in df.columns if c not in RUN_COLUMNS])


def _wandb_row(run) -> dict:
    row = {c: run.summary.get(c) for c in RUN_COLUMNS if run.summary.get(c) is not None}
    row.setdefault("run_id", run.id)
    row.setdefault("sweep", run.group)
    row.setdefault("status", _WANDB_STATES.get(run.state))
    row["config"] = json.dumps(dict(run.config), sort_keys=True, default=str)
    return row


def sweep_labels(runs: pd.DataFrame) -> pd.Series:
    """Each run's sweeps as a set: the store's `sweeps` labels (a run reused by several sweeps has them all),
    else the run's own `sweep` (wandb rows, stores written before labels)."""
    own = runs.sweep.astype(object).where(runs.sweep.notna(), None)
    labels = runs.sweeps if "sweeps" in runs else pd.Series("", index=runs.index)
    return pd.Series([{*filter(None, str(lab or "").split(","))} | ({o} if o else set())
                      for lab, o in zip(labels, own)], index=runs.index, dtype=object)


def select_sweep(runs: pd.DataFrame, sweep: str | None, where: str) -> pd.DataFrame:
    """Rows of one sweep (all rows if `sweep` is None); an unknown name is an error naming the known ones."""
    if sweep is None:
        return runs
    labels = sweep_labels(runs)
    known = sorted(set().union(*labels)) if len(labels) else []
    if sweep not in known:
        raise ReportError(f"no sweep {sweep!r} in {where}; sweeps: {', '.join(known) or '(none)'}")
    return runs[[sweep in lab for lab in labels]].reset_index(drop=True)


def prepare(runs: pd.DataFrame) -> pd.DataFrame:
    """Numeric columns as numbers, a `model` label ordered by size, and a normalised `init` method.

    Runs of several contexts (report/groups.py: e.g. a char and a BPE sweep under one name) get the context in
    their label, `tiny [tokenizer=bpe, ...]`, so no table cell or plot line ever pools them."""
    df = runs.copy()
    for c in _NUMERIC:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    derived = "L" + df.n_layers.astype("Int64").astype(str) + "-d" + df.d_model.astype("Int64").astype(str)
    label = df.model_name.astype(object).where(df.model_name.notna(), derived).astype(str)
    context = context_labels(df)
    if context is not None:
        label = label + " [" + context + "]"
    # Runs widened to MHA's parameter count are another model: their cells never mix with the plain ones.
    match = df.param_match if "param_match" in df else pd.Series(None, index=df.index, dtype=object)
    df["param_match"] = match.astype(object).where(match.notna(), "none")
    df["base_model"] = label
    label = label.where(df.param_match == "none", label + " (params matched: " + df.param_match.astype(str) + ")")
    order = df.assign(model=label).groupby("model").n_params.median().sort_values(na_position="last").index
    df["model"] = pd.Categorical(label, categories=list(order), ordered=True)
    df["init"] = df.init.astype(object).where(df.init.notna(), "scratch").replace(_METHOD_ALIASES)
    return df

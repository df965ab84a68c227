"""`optim.lr=transfer`: a muP run takes its lr from an lr grid stored at the base width, for its own G.

muP's promise is that the lr tuned at d_model = `model.mup_base_width` stays the best lr as the model widens, so a
ladder under muP needs one lr grid per G at the base width and no grid per size. The grid is an ordinary sweep,
labelled `<sweep>_lr` (the ladder's: `ladder_lr`), in the same store. A job with `optim.lr=transfer` is planned
with the grid's best lr for its G: the vertex of the parabola in log lr through the grid's lowest mean val loss and
its two neighbours (scaling.ladder.best_lr), to 3 significant digits, so the run id hashes a number and a run
trained by hand at that lr is the same run.

The grid's runs are those of the job's computation at the base width, whatever their depth and steps: muP,
the same base width and base d_head, the same G, heads, d_head and attention type, the same data, and the same
optimiser but for lr and warm-up (a ladder's warm-up and steps grow with its size). Missing, too small (fewer than
3 lrs) or with its best lr at an edge, the grid is refused in one line that says what to run.
"""

from __future__ import annotations

import json
import math
import os

import pandas as pd

from gqa_sweep.config import ConfigError, identity
from gqa_sweep.scaling.ladder import best_lr
from gqa_sweep.store.results import load_runs

TRANSFER = "transfer"
GRID_SUFFIX = "_lr"
OPTIM_FREE = ("lr", "warmup_steps")  # what a grid run may differ in from the job, besides the model's size


def loss_init(cell: pd.DataFrame) -> float:
    """Loss of a uniform predictor, ln V: what a diverged or failed run counts as."""
    v = pd.to_numeric(cell.vocab_size, errors="coerce").median()
    return math.log(v) if v > 0 else math.nan


def loss_by_lr(cell: pd.DataFrame) -> pd.Series:
    """Final val loss per lr, mean over seeds, with diverged/failed runs counted as ln V."""
    per_run = pd.to_numeric(cell.val_loss, errors="coerce").where(cell.status == "completed", loss_init(cell))
    return per_run.groupby(pd.to_numeric(cell.lr)).mean().sort_index()


def _path(p: object) -> object:
    return os.path.abspath(os.path.expanduser(str(p))) if p else p


def _key(config: dict) -> str:
    """What a grid run shares with the job: its identity (config.identity) but the model's size, lr, warm-up
    and steps."""
    config = identity(config)
    m = config["model"]
    model = {k: m.get(k) for k in ("parametrization", "mup_base_width", "mup_base_d_head", "n_heads", "attention")}
    model["d_head"] = m.get("d_head") or m["d_model"] // m["n_heads"]
    model["n_kv_heads"] = m["n_kv_heads"][0] if isinstance(m["n_kv_heads"], list) else m["n_kv_heads"]
    data = {**config["data"], "path": _path(config["data"].get("path"))}  # cache_dir, allow_repeats: not in it
    optim = {k: v for k, v in config["optim"].items() if k not in OPTIM_FREE}
    precision = config["trainer"].get("precision")
    return json.dumps([model, data, optim, precision], sort_keys=True, default=str)


def grid_runs(config: dict, runs: pd.DataFrame) -> pd.DataFrame:
    """The stored runs of the job's lr grid (see the module's docstring)."""
    base, key = config["model"]["mup_base_width"], _key(config)
    keep = []
    for c, status in zip(runs.config, runs.status):
        if status not in ("completed", "diverged") or not isinstance(c, str):
            keep.append(False)
            continue
        stored = json.loads(c)
        keep.append(stored["model"].get("d_model") == base and _key(stored) == key)
    return runs[keep]


def grid_command(config: dict, sweep: str) -> str:
    base, G = config["model"]["mup_base_width"], config["model"]["n_kv_heads"]
    return (f"train the grid first: this sweep's command at the base width with model.d_model={base} (a ladder: "
            f"its smallest size, ladder=s1 or g1), model.n_kv_heads={G} (or all), at least 3 lrs a factor 2 apart "
            f"around the expected best (e.g. optim.lr=2.5e-3,5e-3,1e-2,2e-2,4e-2,8e-2) and sweep={sweep}")


def transferred_lr(config: dict, results_dir: str) -> tuple[float, str]:
    """(the lr, where it came from) for a job with optim.lr=transfer; ConfigError naming the fix otherwise."""
    m = config["model"]  # config.validate has checked it is a muP model with a base width
    sweep = f"{config.get('sweep') or 'sweep'}{GRID_SUFFIX}"
    runs = grid_runs(config, load_runs(results_dir, sweep=sweep))
    G, base = m["n_kv_heads"], m["mup_base_width"]
    where = f"the {sweep!r} grid at d_model {base}, G = {G}, in {results_dir}"
    if runs.empty:
        raise ConfigError(f"optim.lr=transfer: no run of {where}; {grid_command(config, sweep)}")
    if runs.n_layers.nunique() > 1:  # several depths at the base width: muP transfers width, so take the shallowest
        runs = runs[runs.n_layers == runs.n_layers.min()]
    losses = loss_by_lr(runs).dropna()
    if len(losses) < 3:
        lrs = ", ".join(f"{x:g}" for x in losses.index)
        raise ConfigError(f"optim.lr=transfer: {where} has {len(losses)} lr(s) ({lrs}); it needs at least 3 "
                          f"around the best; {grid_command(config, sweep)}")  # fmt: skip
    lr, at_edge = best_lr(losses.to_dict())
    if at_edge:
        side = "lowest" if lr == losses.index.min() else "highest"
        raise ConfigError(f"optim.lr=transfer: the best lr of {where} is its {side}, {lr:g} "
                          f"(grid {', '.join(f'{x:g}' for x in losses.index)}): the optimum may lie outside it; add "
                          f"lrs beyond it with sweep={sweep}")  # fmt: skip
    lr = float(f"{lr:.3g}")
    seeds = runs.groupby("lr").seed.nunique()
    note = (f"lr {lr:g} transferred from {where}: vertex of {len(losses)} lrs "
            f"({losses.idxmin():g} lowest at {losses.min():.4f}; {int(seeds.max())} seed(s))")
    return lr, note

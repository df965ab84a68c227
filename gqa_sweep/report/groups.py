"""Which runs a table may pool: replicates are runs that differ only in seed.

A run's identity is its stored `config` (the normalised computation its run_id hashes) minus the labels that
never change a number (gqa_sweep.config.IDENTITY_EXCLUDE). The tables compare runs along a few axes (G, lr, head
size, mitigations, attention type, conversion method; the model size is the `model` column) and average over
seeds; every other key must be equal for two runs to share a cell. Keys that vary across the runs are the
report's *context*: each combination of their values is a group, reported apart (its own tables and plots),
so a char and a BPE sweep stored under one sweep name are never averaged. A key that varies only with the model
size (a ladder's steps and warm-up grow with the model) is named by the `model` column and splits nothing.
Rows without a config (hand-written stores) fall back on the data and precision columns.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pandas as pd

from gqa_sweep.config import IDENTITY_EXCLUDE

# What the tables put side by side within one group (seed: what they average over).
AXES = (
    "seed", "optim.lr", "model.n_kv_heads", "model.d_head", "model.qk_norm", "optim.z_loss", "model.param_match",
    "model.attention", "model.rope_dim", "model.kv_lora_rank", "model.q_lora_rank", "model.qk_nope_dim",
    "model.v_dim", "init.",
)  # fmt: skip
# Keys a size ladder sets per model size: no split when each model size has one value of them.
SIZE_TIED = ("model.", "trainer.max_steps", "trainer.val_check_interval", "trainer.ckpt_every_n_steps",
             "optim.warmup_steps", "metrics.")
# The keys a group is named by first; another differing key is named only when these do not already fix it
# (a text corpus also sets data.delimiter: "source=text" says enough).
NAMED_FIRST = ("data.source", "data.name", "data.config", "data.path", "data.tokenizer", "data.vocab_size",
               "trainer.max_steps", "trainer.precision", "trainer.accelerator", "model.parametrization", "data_name",
               "tokenizer")
FALLBACK = ("data_name", "tokenizer", "vocab_size", "block_size", "batch_size", "precision")
# A wandb run's config also carries its run_id (gqa_sweep/run/loggers.py): a name, not part of the computation.
_NOT_IDENTITY = (*IDENTITY_EXCLUDE, "run_id", "run_name", *AXES)


@dataclass
class Group:
    """Runs of one context: `keys` -> value (empty when the runs have one context), and where its files go."""

    keys: dict
    runs: pd.DataFrame
    slug: str

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.keys.items())


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True, default=str) if isinstance(v, list) else v
    return out


def _config(c) -> dict | None:
    if isinstance(c, dict):
        return c
    if isinstance(c, str):
        try:
            c = json.loads(c)
        except ValueError:
            return None
        return c if isinstance(c, dict) else None
    return None


def _is_identity(key: str) -> bool:
    return not any(key == x or key.startswith(x if x.endswith(".") else x + ".") for x in _NOT_IDENTITY)


def identity(runs: pd.DataFrame) -> pd.DataFrame:
    """One column per identity key (config minus labels and axes), a row per run; values as text."""
    rows = []
    configs = runs["config"] if "config" in runs else pd.Series(None, index=runs.index, dtype=object)
    for i, c in zip(runs.index, configs):
        cfg = _config(c)
        if cfg is None:
            rows.append({k: runs.at[i, k] for k in FALLBACK if k in runs})
        else:
            rows.append({k: v for k, v in _flat(cfg).items() if _is_identity(k)})
    return pd.DataFrame(rows, index=runs.index).astype(object).map(_text)


def _text(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "null"
    return format(v, "g") if isinstance(v, float) else str(v)


def _size(runs: pd.DataFrame) -> pd.Series:
    if "model_name" in runs:
        return runs.model_name.astype(object).where(runs.model_name.notna(), "?").astype(str)
    return pd.Series("?", index=runs.index)


def context_keys(runs: pd.DataFrame, ident: pd.DataFrame | None = None) -> list[str]:
    """The identity keys whose value differs between runs and is not fixed by the model size."""
    ident = identity(runs) if ident is None else ident.fillna("null")
    size = _size(runs)
    keys = []
    for k in sorted(ident.columns):
        if ident[k].nunique() <= 1:
            continue
        if k.startswith(SIZE_TIED) and ident[k].groupby(size).nunique().max() <= 1:
            continue
        keys.append(k)
    return keys


def _short(key: str, value: str) -> str:
    """`tokenizer=bpe`, `path=corpus.txt`: a label short enough for a table's model column."""
    leaf = key.rsplit(".", 1)[-1]
    return f"{leaf}={value.rstrip('/').rsplit('/', 1)[-1] if leaf == 'path' else value}"


def _naming(ident: pd.DataFrame, keys: list[str]) -> list[str]:
    """The context keys that name the groups: NAMED_FIRST ones, then others not fixed by the keys before them."""
    named = [k for k in NAMED_FIRST if k in keys]
    for k in keys:
        if k not in named and (not named or ident.groupby(named)[k].nunique().max() > 1):
            named.append(k)
    return named


def split(runs: pd.DataFrame) -> list[Group]:
    """The runs' groups, one per combination of the context keys' values (one group when there are none)."""
    if runs.empty:
        return [Group({}, runs, "")]
    ident = identity(runs).fillna("null")
    keys = _naming(ident, context_keys(runs, ident))
    if not keys:
        return [Group({}, runs, "")]
    groups, slugs = [], set()
    for values, idx in ident.groupby(keys, sort=True).groups.items():
        values = values if isinstance(values, tuple) else (values,)
        what = dict(zip(keys, values))
        slug = re.sub(r"[^A-Za-z0-9.=-]+", "_", ",".join(_short(k, v) for k, v in what.items()))[:80]
        slug = slug if slug not in slugs else f"{slug}-{len(groups) + 1}"
        slugs.add(slug)
        groups.append(Group(what, runs.loc[idx], slug))
    return groups


def context_labels(runs: pd.DataFrame) -> pd.Series | None:
    """Each run's short context label ("tokenizer=bpe, source=text"), or None when the runs share one context."""
    groups = split(runs)
    if len(groups) <= 1:
        return None
    out = pd.Series("", index=runs.index, dtype=object)
    for g in groups:
        out[g.runs.index] = ", ".join(_short(k, v) for k, v in g.keys.items())
    return out

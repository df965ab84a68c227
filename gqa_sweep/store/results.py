"""The results store: one SQLite row per run plus its per-step history, under `results_dir/runs.sqlite`.

SQLite in WAL mode is a real database that many processes (joblib, SLURM array jobs on one file
system with locking) can write at once; each run is written in one transaction, so a crash or a
SIGKILL leaves either the whole row or nothing. Read it with pandas (`load_runs`) or the sqlite3 CLI.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import tempfile
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas loads lazily: the CLI checks the store before heavy imports
    import pandas as pd

DB_NAME = "runs.sqlite"
STATUSES = ("completed", "diverged", "failed")

# Column name -> SQLite type. The first block is the public contract (see docs/metrics.md).
RUN_COLUMNS: dict[str, str] = {
    "run_id": "TEXT PRIMARY KEY",
    "sweep": "TEXT",
    "status": "TEXT",
    "n_heads": "INTEGER",
    "n_kv_heads": "INTEGER",
    "group_size": "INTEGER",
    "n_layers": "INTEGER",
    "d_model": "INTEGER",
    "d_head": "INTEGER",
    "n_params": "INTEGER",
    "seed": "INTEGER",
    "lr": "REAL",
    "max_steps": "INTEGER",
    "tokens_seen": "INTEGER",
    "val_loss": "REAL",
    "val_ppl": "REAL",
    "grad_norm_max": "REAL",
    "loss_spikes": "INTEGER",
    "max_attn_logit": "REAL",
    "diverged_step": "INTEGER",
    "train_tokens_per_s": "REAL",
    "mfu": "REAL",
    "peak_mem_bytes": "INTEGER",
    "kv_bytes_per_token": "INTEGER",
    "decode_tokens_per_s": "REAL",
    "wall_s": "REAL",
    "device": "TEXT",
    "torch_version": "TEXT",
    "config": "TEXT",
    "started_at": "TEXT",
    "finished_at": "TEXT",
    # Beyond the contract.
    "model_name": "TEXT",
    "data_name": "TEXT",
    "tokenizer": "TEXT",
    "vocab_size": "INTEGER",
    "batch_size": "INTEGER",
    "block_size": "INTEGER",
    "n_params_non_embedding": "INTEGER",
    "train_loss": "REAL",
    "grad_norm_spikes": "INTEGER",
    "loss_spike_score": "REAL",
    "flops_per_token": "REAL",
    "model_flops_per_s": "REAL",
    "kv_dtype": "TEXT",
    "precision": "TEXT",
    "sdpa_backend": "TEXT",
    "init": "TEXT",
    "alpha": "REAL",
    "parent_run_id": "TEXT",
    "resumed_from_step": "INTEGER",
    "error": "TEXT",
    "host": "TEXT",
    # What the per-run decode measured: sequences per step and tokens cached at the last step.
    "decode_batch": "INTEGER",
    "decode_context": "INTEGER",
    # How it was measured: the step (eager | graph: a CUDA graph replayed) and the cache's bytes at the last step
    # over the matmul weights' (> 1: the cache dominates what a step reads, where fewer KV heads pay off).
    "decode_mode": "TEXT",
    "decode_cache_over_weights": "REAL",
    # Stability mitigations (experiment=stability).
    "qk_norm": "INTEGER",
    "z_loss": "REAL",
    # What a user reads: the run's name (H8-G2-s0, as in logs and wandb) and the spread of the
    # train tokens/s windows, so a noisy throughput number is visible next to its median.
    "run_name": "TEXT",
    "train_tokens_per_s_p10": "REAL",
    "train_tokens_per_s_p90": "REAL",
    # Recall and position (data=mqar, docs/metrics.md): JSON lists in TEXT columns keep the store plain rows.
    "recall_acc": "REAL",
    "recall_acc_by_segment": "TEXT",
    "val_loss_by_pos": "TEXT",
    # Parameter matching (model.param_match): the FFN width used, and how it was chosen (none | ffn).
    "d_ff": "INTEGER",
    "param_match": "TEXT",
    # G of each layer, comma-joined ("2,2"; "4,2,1,1" for a per-layer layout, whose n_kv_heads is NULL).
    "kv_layout": "TEXT",
    # The peak FLOP/s `mfu` is taken against, and its source: datasheet (known GPUs) or measured (peak.py).
    "peak_flops": "REAL",
    "peak_source": "TEXT",
    "peak_measured_at": "TEXT",  # when the peak was measured (ISO time); empty for a datasheet figure
    # The attention type (model.attention: gqa | gta | mla); MLA has no G, its n_kv_heads is H (docs/metrics.md).
    "attention": "TEXT",
    "kv_lora_rank": "INTEGER",  # MLA's cached latent d_c (null otherwise)
    "rope_dim": "INTEGER",  # GTA / MLA: the decoupled RoPE key's dims d_R (null for GQA)
    # Tokens in the train split and passes over it (tokens_seen / data_train_tokens; > 1: the data repeated).
    "data_train_tokens": "INTEGER",
    "epochs": "REAL",
    "tokens_per_param": "REAL",  # tokens_seen / n_params_non_embedding (Chinchilla's D / N)
    # Throughput that means one thing: train_tokens_per_s counts tokens with a loss target (MQAR: its
    # queries); this counts every position processed (docs/metrics.md).
    "train_tokens_processed_per_s": "REAL",
    # How much of the machine the run had (docs/metrics.md): throughput of a contended run is not comparable.
    "cpu_util": "REAL",
    "load_start": "REAL",
    "load_end": "REAL",
    "contended": "INTEGER",
    # GPU runs (docs/metrics.md): other processes seen on the run's GPU (NULL: CPU run, or NVML / nvidia-smi
    # could not tell), the compiled run's first step beyond a timed one, the dense-matmul peak measured in the
    # run's dtype beside the datasheet `peak_flops`, and where a failed run stopped (out of memory included).
    "gpu_others": "INTEGER",
    "compile_s": "REAL",
    "peak_flops_measured": "REAL",
    "failed_phase": "TEXT",
    "failed_step": "INTEGER",
    # sp | mup (model.parametrization, docs/mup.md); NULL in rows stored before it existed, which are all sp.
    "parametrization": "TEXT",
}
HISTORY_COLUMNS = ("step", "loss", "grad_norm", "lr", "tokens_per_s", "max_attn_logit")


class StoreError(RuntimeError):
    pass


def db_path(results_dir: str | Path) -> Path:
    return Path(results_dir) / DB_NAME


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=60)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA busy_timeout=60000")
    return con


def _has_table(con: sqlite3.Connection, name: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def _nan_to_none(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


class ResultsStore:
    """Writes and reads runs in `results_dir/runs.sqlite`."""

    def __init__(self, results_dir: str | Path) -> None:
        self.dir = Path(results_dir)
        self.path = db_path(self.dir)

    def check_writable(self) -> None:
        """Fail early, before any training, if the store could not be created or written; leaves nothing behind.

        Permission bits are not enough: root may write anywhere by them, yet /proc, a read-only mount or a full
        disk refuse, so a directory is really made (and removed) in the nearest existing ancestor."""
        existing = self.dir
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            why = f"{existing} is not a directory"
        elif self.path.exists() and not os.access(self.path, os.W_OK):
            why = f"no write permission on {self.path}"
        else:
            try:
                os.rmdir(tempfile.mkdtemp(prefix=".gqa-write-check-", dir=existing))
                return
            except OSError as e:
                why = f"{existing}: {e.strerror or e}"
        raise StoreError(
            f"results_dir={str(self.dir)!r} is not writable ({why}); "
            "pass a writable directory, e.g. results_dir=$HOME/gqa-results"
        )

    def _init(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with closing(_connect(self.path)) as con, con:
            cols = ", ".join(f'"{c}" {t}' for c, t in RUN_COLUMNS.items())
            con.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
            have = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
            for c, t in RUN_COLUMNS.items():  # stores written by older versions gain new columns
                if c not in have:
                    con.execute(f'ALTER TABLE runs ADD COLUMN "{c}" {t.replace(" PRIMARY KEY", "")}')
            con.execute(
                "CREATE TABLE IF NOT EXISTS history (run_id TEXT, step INTEGER, loss REAL, grad_norm REAL, "
                "lr REAL, tokens_per_s REAL, max_attn_logit REAL, PRIMARY KEY (run_id, step))"
            )
            # A run is one computation; each sweep that trained or reused it labels it here.
            con.execute("CREATE TABLE IF NOT EXISTS sweeps (run_id TEXT, sweep TEXT, PRIMARY KEY (run_id, sweep))")

    def status(self, run_id: str) -> str | None:
        if not self.path.exists():
            return None
        with closing(_connect(self.path)) as con:
            row = con.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row[0] if row else None

    def get(self, run_id: str) -> dict | None:
        if not self.path.exists():
            return None
        df = load_runs(self.dir)
        hit = df[df.run_id == run_id]
        return None if hit.empty else hit.iloc[0].to_dict()

    def stored_runs(self) -> list[tuple[str, str, str | None, str | None]]:
        """(run_id, status, config JSON, precision) of every run: how gqa_sweep.plan finds a computation that
        an older version stored under another id."""
        if not self.path.exists():
            return []
        with closing(_connect(self.path)) as con:
            if not _has_table(con, "runs"):
                return []
            return con.execute("SELECT run_id, status, config, precision FROM runs ORDER BY started_at").fetchall()

    def finished_since(self, since_iso: str) -> list[dict]:
        """run_id, status and wall_s of the runs finished at or after an ISO time (a sweep's progress)."""
        if not self.path.exists():
            return []
        with closing(_connect(self.path)) as con:
            if not _has_table(con, "runs"):
                return []
            rows = con.execute("SELECT run_id, status, wall_s FROM runs WHERE finished_at >= ?", (since_iso,))
            return [dict(zip(("run_id", "status", "wall_s"), r)) for r in rows.fetchall()]

    def add_sweep(self, run_id: str, sweep: str) -> None:
        """Label a stored run with one more sweep (a sweep that reuses it instead of training it again)."""
        self._init()
        with closing(_connect(self.path)) as con, con:
            con.execute("INSERT OR IGNORE INTO sweeps (run_id, sweep) VALUES (?, ?)", (run_id, sweep))

    def write_run(self, row: dict, history: Iterable[dict] = (), replaces: str | None = None) -> None:
        """Upsert one run and replace its history, in a single transaction. `replaces`: the id an older
        version stored the same computation under (a forced rerun supersedes that row; its labels move over)."""
        if row.get("status") not in STATUSES:
            raise ValueError(f"status={row.get('status')!r}; expected one of {STATUSES}")
        unknown = set(row) - set(RUN_COLUMNS)
        if unknown:
            raise ValueError(f"unknown result columns: {sorted(unknown)}")
        self._init()
        row = {k: _nan_to_none(v) for k, v in row.items()}
        if isinstance(row.get("config"), dict):
            row["config"] = json.dumps(row["config"], sort_keys=True, default=str)
        cols = list(row)
        sql = (
            f"INSERT INTO runs ({', '.join(f'{c!r}' for c in cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT(run_id) DO UPDATE SET {', '.join(f'{c!r}=excluded.{c!r}' for c in cols if c != 'run_id')}"
        )
        hist = [tuple(_nan_to_none(h.get(c)) for c in HISTORY_COLUMNS) for h in history]
        with closing(_connect(self.path)) as con, con:
            con.execute(sql, [row[c] for c in cols])
            if replaces is not None and replaces != row["run_id"]:
                con.execute("UPDATE OR IGNORE sweeps SET run_id = ? WHERE run_id = ?", (row["run_id"], replaces))
                for table in ("runs", "history", "sweeps"):
                    con.execute(f"DELETE FROM {table} WHERE run_id = ?", (replaces,))
            if row.get("sweep") is not None:
                con.execute("INSERT OR IGNORE INTO sweeps (run_id, sweep) VALUES (?, ?)", (row["run_id"], row["sweep"]))
            con.execute("DELETE FROM history WHERE run_id = ?", (row["run_id"],))
            con.executemany(
                f"INSERT INTO history (run_id, {', '.join(HISTORY_COLUMNS)}) VALUES (?{', ?' * len(HISTORY_COLUMNS)})",
                [(row["run_id"], *h) for h in hist],
            )


def load_runs(results_dir: str | Path, sweep: str | None = None) -> pd.DataFrame:
    """All runs in the store, one row each, with every column of RUN_COLUMNS (NaN where not measured).

    `sweeps` lists every sweep that trained or reused the run (comma-joined); `sweep=NAME` keeps those runs.
    """
    import pandas as pd

    path = db_path(results_dir)
    columns = [*RUN_COLUMNS, "sweeps"]
    if not path.exists():
        return pd.DataFrame(columns=columns)
    with closing(_connect(path)) as con:
        if not _has_table(con, "runs"):  # a store being created by another process right now
            return pd.DataFrame(columns=columns)
        df = pd.read_sql_query("SELECT * FROM runs ORDER BY started_at, run_id", con)
        labels = con.execute("SELECT run_id, sweep FROM sweeps").fetchall() if _has_table(con, "sweeps") else []
    by_run: dict[str, set[str]] = {}
    for run_id, label in [*labels, *zip(df.run_id, df.sweep)]:  # a store written before labels: its own sweep
        if label is not None:
            by_run.setdefault(run_id, set()).add(label)
    df["sweeps"] = [",".join(sorted(by_run.get(r, ()))) for r in df.run_id]
    if sweep is not None:
        df = df[[sweep in by_run.get(r, ()) for r in df.run_id]].reset_index(drop=True)
    return df.reindex(columns=columns + [c for c in df.columns if c not in columns])


def load_history(results_dir: str | Path, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Per-step training history (step, loss, grad_norm, lr, tokens_per_s, max_attn_logit) of runs."""
    import pandas as pd

    path = db_path(results_dir)
    if not path.exists():
        return pd.DataFrame(columns=["run_id", *HISTORY_COLUMNS])
    with closing(_connect(path)) as con:
        if not _has_table(con, "history"):
            return pd.DataFrame(columns=["run_id", *HISTORY_COLUMNS])
        df = pd.read_sql_query("SELECT * FROM history ORDER BY run_id, step", con)
    if run_ids is not None:
        df = df[df.run_id.isin(list(run_ids))].reset_index(drop=True)
    return df

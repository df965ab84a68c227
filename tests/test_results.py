"""The results store: atomic upserts, history, parallel writers, clear errors."""

from __future__ import annotations

import math
import multiprocessing as mp
from pathlib import Path

import pytest

from gqa_sweep.store.results import RUN_COLUMNS, ResultsStore, StoreError, load_history, load_runs


def _row(run_id: str, **kw) -> dict:
    return {"run_id": run_id, "sweep": "s", "status": "completed", "n_kv_heads": 2, "val_loss": 1.5, **kw}


def test_write_then_load_roundtrip_with_all_columns(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.write_run(_row("a", config={"model": {"n_heads": 8}}, val_ppl=math.nan), [{"step": 1, "loss": 4.2}])
    runs = load_runs(tmp_path)
    assert list(runs.columns[: len(RUN_COLUMNS)]) == list(RUN_COLUMNS)
    assert runs.loc[0, "run_id"] == "a" and runs.loc[0, "val_loss"] == 1.5
    assert runs.loc[0, "config"] == '{"model": {"n_heads": 8}}'
    assert runs.val_ppl.isna().all()  # NaN is stored as NULL
    hist = load_history(tmp_path)
    assert hist[["run_id", "step", "loss"]].values.tolist() == [["a", 1, 4.2]]
    assert store.status("a") == "completed" and store.status("zz") is None


def test_upsert_replaces_row_and_history(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.write_run(_row("a", status="failed", error="boom"), [{"step": 1, "loss": 9.0}, {"step": 2, "loss": 8.0}])
    store.write_run(_row("a", val_loss=1.0), [{"step": 1, "loss": 3.0}])
    runs = load_runs(tmp_path)
    assert len(runs) == 1 and runs.status[0] == "completed" and runs.val_loss[0] == 1.0
    assert load_history(tmp_path).loss.tolist() == [3.0]


def test_bad_rows_are_rejected_before_writing(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    with pytest.raises(ValueError, match="status='done'; expected one of"):
        store.write_run(_row("a", status="done"))
    with pytest.raises(ValueError, match=r"unknown result columns: \['typo'\]"):
        store.write_run(_row("a", typo=1))
    assert load_runs(tmp_path).empty


def test_unwritable_dir_names_the_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="is not writable .* pass a writable directory"):
        ResultsStore(blocker / "sub").check_writable()


def test_missing_store_loads_empty(tmp_path: Path) -> None:
    assert load_runs(tmp_path / "nope").empty and load_history(tmp_path / "nope").empty


def _writer(args: tuple[str, int]) -> None:
    root, worker = args
    store = ResultsStore(root)
    for i in range(15):
        store.write_run(_row(f"w{worker}-{i}"), [{"step": s, "loss": float(s)} for s in range(20)])


def test_parallel_writers_all_land(tmp_path: Path) -> None:
    with mp.get_context("spawn").Pool(4) as pool:
        pool.map(_writer, [(str(tmp_path), w) for w in range(4)])
    runs = load_runs(tmp_path)
    assert len(runs) == 60 and runs.run_id.is_unique
    assert len(load_history(tmp_path)) == 60 * 20

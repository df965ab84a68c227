"""Train tokens/s means one thing: tokens that carry a loss target; the positions processed are beside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gqa_sweep.store.results import load_runs
from tests.conftest import TINY, gqa_sweep
from tests.test_mqar import MQAR_TINY


def test_text_runs_have_a_target_at_every_position(tiny_sweep: Path) -> None:
    runs = load_runs(tiny_sweep)
    assert (runs.train_tokens_per_s > 0).all()
    assert runs.train_tokens_per_s.tolist() == pytest.approx(runs.train_tokens_processed_per_s.tolist(), rel=1e-12)


def test_mqar_tokens_per_s_counts_its_queries_not_its_context(tmp_path: Path) -> None:
    tiny = [o for o in TINY if not o.startswith("data.")]
    proc = gqa_sweep("-m", *tiny, *MQAR_TINY, "model.n_kv_heads=1", "trainer.max_steps=16",
                     f"results_dir={tmp_path / 'results'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = load_runs(tmp_path / "results").itertuples()
    # Train segments [16, 2] and [32, 4]: an example of T tokens has T/8 queries (K = T/8), so the ratio is 8.
    assert r.train_tokens_processed_per_s / r.train_tokens_per_s == pytest.approx(8, rel=1e-9)

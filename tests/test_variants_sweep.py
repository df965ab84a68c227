"""model.attention=gta|mla end to end: gqa-sweep trains, the rows carry the variant's KV bytes, the report shows it."""

from __future__ import annotations

import json

from gqa_sweep.report import main as report
from gqa_sweep.store.results import load_runs
from tests.conftest import TINY, gqa_sweep


def test_gta_and_mla_train_from_the_command_line_and_reach_the_report(tmp_path) -> None:
    results = tmp_path / "results"
    proc = gqa_sweep("-m", *TINY, f"results_dir={results}", "model.n_kv_heads=2", "model.attention=gqa,gta,mla",
                     "sweep=variants", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = load_runs(results)
    kinds = {json.loads(c)["model"]["attention"]: r for c, (_, r) in zip(runs.config, runs.iterrows())}
    assert set(kinds) == {"gqa", "gta", "mla"} and (runs.status == "completed").all()
    nbytes = int(kinds["gqa"].kv_bytes_per_token) // (2 * 2 * 4)  # GQA: 2 * G * d_head = 2 * 2 * 4 elements
    d_head = 32 // 8
    assert int(kinds["gta"].kv_bytes_per_token) == nbytes * (2 * d_head + d_head // 2)  # G d_h + d_R
    assert int(kinds["mla"].kv_bytes_per_token) == nbytes * (4 * d_head + d_head // 2)  # d_c + d_R
    assert len(set(runs.run_id)) == 3
    assert report([str(results), "--out", str(tmp_path / "report")]) == 0
    shown = (tmp_path / "report" / "variants.md").read_text()
    assert all(f"| {v}" in shown for v in ("GQA-2", "GTA-2", "MLA-16"))

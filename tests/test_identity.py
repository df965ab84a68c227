"""One run per computation: a run's id hashes what it computes, not how it was asked for, and stores written
by older versions (ids hashed with the sweep name and `auto` precision) are found, reused and reported."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from gqa_sweep.store.results import ResultsStore, load_history, load_runs
from gqa_sweep.train.precision import resolve_precision
from tests.conftest import ROOT, TINY, gqa_sweep

# Stores as the code of bec5dc2 wrote them (AMD EPYC Zen 5, trainer.precision=auto -> bf16-mixed, 2026-12-01),
# ids hashed with the sweep name and `auto`: `gqa-sweep -m` (tiny Shakespeare, 4 runs), and a 2-run MQAR sweep.
OLD_STORE = ROOT / "tests" / "data" / "store_bec5dc2"
OLD_IDS = {1: "552efa24b463", 2: "2472a2c12499", 4: "b4b112e53ef5", 8: "1873e56dbf69"}
OLD_MQAR = ROOT / "tests" / "data" / "store_bec5dc2_mqar"
OLD_MQAR_IDS = {1: "000ee3b486b4", 2: "d2c291d41039"}
MQAR_ARGS = [  # the MQAR sweep of OLD_MQAR, as it was run
    "model.d_model=32", "model.n_layers=1", "trainer.max_steps=8", "trainer.val_check_interval=4",
    "trainer.ckpt_every_n_steps=2", "trainer.num_threads=1", "metrics.decode_batch=2", "metrics.decode_prompt_tokens=4",
    "metrics.decode_new_tokens=8", "metrics.spike_window=3", "metrics.attn_logit_every=2",
    "metrics.throughput_warmup=2", "logger=none", "data=mqar", "data.vocab_size=64", "data.num_train=200",
    "data.num_test=16", "model.n_heads=2", "data.train_segments=[[16,2],[32,4]]",
    "data.test_segments=[[16,2],[32,4],[32,8]]", "data.block_size=32", "data.batch_size=4", "model.n_kv_heads=1,2",
]


def preview(tmp_path: Path, *args: str) -> tuple[str, dict[str, str]]:
    """The preview's text and its run -> run_id column."""
    proc = gqa_sweep("-m", "preview=true", f"results_dir={tmp_path / 'results'}", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ids = dict(re.findall(r"^\|\s+\d+ \|\s+(\S+) \|\s+([0-9a-f]{12}) \|", proc.stdout, flags=re.M))
    return proc.stdout, ids


def old_store(tmp_path: Path, store: Path = OLD_STORE) -> Path:
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(store / "runs.sqlite", results)
    return results


def test_auto_precision_is_the_run_of_the_precision_it_resolves_to(tmp_path: Path) -> None:
    used, _ = resolve_precision("auto", "cpu")
    _, auto = preview(tmp_path, "trainer.precision=auto")
    _, explicit = preview(tmp_path, f"trainer.precision={used}")
    assert len(auto) == 4 and auto == explicit
    _, other = preview(tmp_path, "trainer.precision=" + ("32-true" if used != "32-true" else "bf16-mixed"))
    assert set(other.values()).isdisjoint(auto.values())  # another precision is another computation


def test_param_match_at_mha_and_default_spellings_are_the_plain_run(tmp_path: Path) -> None:
    _, plain = preview(tmp_path, "model.n_kv_heads=8")
    _, matched = preview(tmp_path, "model.n_kv_heads=8", "model.param_match=ffn")
    _, spelled = preview(tmp_path, "model.n_kv_heads=8", "model.d_head=16", "model.d_ff=352")
    assert plain == matched == spelled == {"H8-G8-s0": plain["H8-G8-s0"]}
    _, widened = preview(tmp_path, "model.n_kv_heads=2", "model.param_match=ffn")
    _, narrow = preview(tmp_path, "model.n_kv_heads=2")
    assert widened.keys() == {"H8-G2-s0-matchffn"} and set(widened.values()) != set(narrow.values())


def test_the_sweep_name_is_a_label_not_an_identity(tmp_path: Path) -> None:
    _, default = preview(tmp_path)
    _, renamed = preview(tmp_path, "sweep=another")
    _, seeds = preview(tmp_path, "experiment=seeds")
    assert default == renamed and len(seeds) == 12
    assert {name: seeds[name] for name in default} == default  # experiment=seeds' seed 0 is the default sweep


def test_an_old_store_is_found_reused_and_reported(tmp_path: Path) -> None:
    results = old_store(tmp_path, OLD_MQAR)
    text, _ = preview(tmp_path, *MQAR_ARGS, "trainer.precision=bf16-mixed")
    assert "2 jobs, 0 to train, 2 already done" in text
    for G, old in OLD_MQAR_IDS.items():
        assert re.search(rf"H2-G{G}-s0 \|\s+[0-9a-f]{{12}} \|\s+[0-9.e-]+ \|\s+completed \(as {old}\) \|\s+skip", text), text
    # A real sweep under another name reuses them: nothing trains, the rows gain its label, nothing is duplicated.
    before = load_runs(results)
    proc = gqa_sweep("-m", *MQAR_ARGS, "trainer.precision=bf16-mixed", "sweep=again", f"results_dir={results}",
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("skip H2-G") == 2
    after = load_runs(results)
    assert sorted(after.run_id) == sorted(before.run_id) == sorted(OLD_MQAR_IDS.values())
    assert set(after.sweeps) == {"again,recall"}
    assert sorted(load_runs(results, sweep="again").run_id) == sorted(OLD_MQAR_IDS.values())
    stored = [c for c in before.columns if c != "sweeps" and before[c].notna().any()]
    assert after[stored].equals(before[stored])  # every stored value kept as it was
    from gqa_sweep.report.cli import main as report_main  # the report finds them under the new sweep's name

    assert report_main([str(results), "--sweep", "again", "--out", str(tmp_path / "report")]) == 0
    assert "T32-K8 (test only)" in (tmp_path / "report" / "recall.md").read_text()


def test_rows_from_before_the_new_batch_order_are_kept_not_reused(tmp_path: Path) -> None:
    """The default sweep's old rows trained on the offsets of the old data path: the same config is another
    computation now (data.spec.CORPUS_ORDER), so they are read and reported but trained again, not reused."""
    results = old_store(tmp_path)
    text, ids = preview(tmp_path, "trainer.precision=bf16-mixed")
    assert "4 jobs, 4 to train, 0 already done" in text and set(ids.values()).isdisjoint(OLD_IDS.values())
    assert sorted(load_runs(results, sweep="g_sweep").run_id) == sorted(OLD_IDS.values())
    from gqa_sweep.report.cli import main as report_main

    assert report_main([str(results), "--out", str(tmp_path / "report")]) == 0
    ablation = (tmp_path / "report" / "ablation.md").read_text()
    assert all(f"| {G} " in ablation for G in OLD_IDS)


def test_a_forced_rerun_supersedes_the_row_an_old_version_stored(tmp_path: Path) -> None:
    results = old_store(tmp_path)
    store = ResultsStore(results)
    store.add_sweep(OLD_IDS[1], "seeds")
    old = store.get(OLD_IDS[1])
    new = {k: old[k] for k in ("sweep", "status", "val_loss", "n_kv_heads")} | {"run_id": "0123456789ab"}
    store.write_run(new, [{"step": 1, "loss": 2.0}], replaces=OLD_IDS[1])
    runs = load_runs(results)
    assert len(runs) == 4 and OLD_IDS[1] not in set(runs.run_id)
    assert runs.set_index("run_id").sweeps["0123456789ab"] == "g_sweep,seeds"  # its labels moved over
    assert list(load_history(results, [OLD_IDS[1]]).step) == []


def test_a_contended_run_is_marked_and_the_sweep_tells_its_progress(tmp_path: Path) -> None:
    """Two busy loops per core while a 2-run sweep trains: each row says it was contended, the sweep warns and
    gives its ETA after each run, and the report flags the contended throughput. The runs are long enough
    (60 steps) that the scheduler's share, not luck within one time slice, decides their CPU time."""
    import os
    import subprocess
    import sys

    loop = [sys.executable, "-c", "while True: pass"]
    hogs = [subprocess.Popen(loop) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        results = tmp_path / "results"
        proc = gqa_sweep("-m", *TINY, "trainer.max_steps=60", f"results_dir={results}", "model.n_kv_heads=1,2",
                         cwd=tmp_path)
    finally:
        for h in hogs:
            h.kill()
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stdout + proc.stderr
    assert re.search(r"sweep: 1/2 runs done in \d+s; about \d+s of runs left", log), log[-3000:]
    assert re.search(r"sweep: 2/2 runs done in \d+s; about 0s of runs left", log), log[-3000:]
    runs = load_runs(results)
    assert (runs.contended == 1).all() and (runs.cpu_util < 0.75).all(), runs[["cpu_util", "load_start"]]
    assert log.count("was contended (CPU util") == 2
    from gqa_sweep.report.cli import main as report_main

    assert report_main([str(results), "--out", str(tmp_path / "report")]) == 0
    assert "(contended)" in (tmp_path / "report" / "ablation.md").read_text()  # shown, flagged

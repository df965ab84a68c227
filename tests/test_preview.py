"""preview=true sizes a sweep (N, tokens, FLOPs, time per model size) and refuses a ladder its corpus cannot
feed; the GPU ladder is a preset of size files, not code to edit (issue 30, item 5)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from gqa_sweep.config import ConfigError
from gqa_sweep.data.prepare import prepare, prepared_counts
from gqa_sweep.data.progress import Progress
from gqa_sweep.model.shape import ModelConfig, train_flops_per_token
from gqa_sweep.plan import plan_spec, spec_of
from gqa_sweep.preview import check_ladder_corpus, print_preview, size_costs
from gqa_sweep.scaling import ladder, ladder_plan
from gqa_sweep.spec import thawed
from gqa_sweep.sweep import prepare_data

ROOT = Path(__file__).resolve().parents[1]


def _plans(tmp_path: Path, *overrides: str, sizes=("s1", "s5"), kv=(1, 4)):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return [plan_spec(spec_of(compose("config", overrides=[f"results_dir={tmp_path}", f"ladder={size}",
                                                                 f"model.n_kv_heads={G}", *overrides])))
                for size in sizes for G in kv]  # fmt: skip


def test_size_costs_are_the_ladders_own_numbers(tmp_path) -> None:
    plans = _plans(tmp_path, "experiment=ladder", "data=ladder_local")
    costs = {c.model.split()[0]: c for c in size_costs(plans)}
    for s in ladder.sizes():
        if f"ladder-{s.label}" in costs:
            c = costs[f"ladder-{s.label}"]
            cfg = ModelConfig(vocab_size=512, block_size=128, n_layers=s.n_layers, d_model=s.d_model, n_heads=4, n_kv_heads=4,
                              d_head=16)
            assert (c.n_params, c.tokens, c.runs) == (s.n_params, s.tokens, 2)  # N of the MHA model, as the store
            assert c.flops == pytest.approx(s.tokens * train_flops_per_token(cfg, 128))
    assert sorted(costs) == ["ladder-s1", "ladder-s5"]


def test_a_ladder_with_too_small_a_corpus_is_refused_with_both_numbers(tmp_path) -> None:
    plans = _plans(tmp_path, "experiment=ladder", "data=ladder_local", "data.allow_repeats=false")
    d = thawed(plans[0].spec.data)
    assert prepared_counts(d) is None  # nothing prepared yet: unknown, so no refusal
    check_ladder_corpus(plans)
    prepare(d, Progress(enabled=False))
    assert prepared_counts(d) == {"train": 516_405, "val": 59_401}  # docs/benchmarks.md's numbers
    want = (r"the corpus has 516,405 train tokens but ladder-s5 \(N = 192,960\) trains on 3,860,480: the ladder "
            r"would repeat its data 7.5 times. .* or data.allow_repeats=true")  # fmt: skip
    buf = io.StringIO()
    with pytest.raises(ConfigError, match=want), contextlib.redirect_stdout(buf):
        print_preview(plans)
    assert "| ladder-s5 (L3 d64 H4 dh16) | 192,960 | 3,860,480 |" in buf.getvalue()
    with pytest.raises(ConfigError, match=want):  # the sweep itself refuses before any run trains
        prepare_data([p for p in plans if not p.skip])
    check_ladder_corpus(_plans(tmp_path, "experiment=ladder", "data=ladder_local"))  # the smoke corpus: allowed
    check_ladder_corpus(plans, train_tokens=3_860_480)  # enough


def test_the_gpu_preset_is_size_files_and_an_experiment(tmp_path) -> None:
    files = ladder_plan.size_files("gpu")
    assert list(files) == ["g1", "g2", "g3", "g4", "g5", "g6"]
    for label, text in files.items():
        assert (ROOT / "conf" / "ladder" / f"{label}.yaml").read_text() == text, (
            "conf/ladder is stale: run `python -m gqa_sweep.scaling.ladder_plan --preset gpu --write conf/ladder`")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog.\n" * 100)
    plans = _plans(tmp_path, "experiment=ladder_gpu", f"data.path={corpus}", "preview=true", sizes=("g1", "g6"),
                   kv=(8,))  # fmt: skip
    g1, g6 = (p.spec for p in plans)
    assert (g1.model.d_model, g6.model.d_model, g6.model.n_heads, g6.model.d_head) == (384, 1280, 8, 64)
    assert (g6.trainer.accelerator, g6.model.parametrization, g6.model.mup_base_width) == ("gpu", "mup", 384)
    assert g6.optim["lr"] == "transfer" and "no run of the 'ladder_lr' grid at d_model 384, G = 8" in g6.lr_note
    costs = size_costs(plans)
    assert costs[-1].n_params == 262_841_600 and costs[-1].tokens == 160_426 * 32 * 1024

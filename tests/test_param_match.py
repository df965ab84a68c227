"""model.param_match=ffn: every G gets the G=H model's non-embedding parameter count by widening d_ff."""

import pytest

from gqa_sweep.model.shape import ModelConfig, divisors, matched_d_ff, non_embedding_params
from gqa_sweep.model.transformer import DecoderLM

SHAPES = [  # (n_layers, d_model, n_heads, extras)
    (2, 128, 8, {}),
    (2, 64, 4, {"tie_embeddings": True}),
    (3, 96, 12, {"d_head": 16, "qk_norm": True}),
    (2, 256, 16, {}),
    (1, 48, 6, {"d_ff": 100}),
    (2, 384, 8, {"d_head": 32}),
    (4, 80, 10, {}),
]


def _cfg(L, d, H, G, **kw):
    return ModelConfig(vocab_size=67, block_size=16, n_layers=L, d_model=d, n_heads=H, n_kv_heads=G, **kw)


@pytest.mark.parametrize("shape", SHAPES)
def test_formula_equals_the_model_count(shape):
    L, d, H, extra = shape
    for G in divisors(H):
        cfg = _cfg(L, d, H, G, **extra)
        assert non_embedding_params(cfg) == DecoderLM(cfg).num_params(non_embedding=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_ffn_matching_within_half_a_percent_of_mha_at_every_G(shape):
    L, d, H, extra = shape
    mha = DecoderLM(_cfg(L, d, H, H, **extra)).num_params(non_embedding=True)
    for G in divisors(H):
        base = _cfg(L, d, H, G, **extra)
        d_ff = matched_d_ff(base)
        n = DecoderLM(_cfg(L, d, H, G, **{**extra, "d_ff": d_ff})).num_params(non_embedding=True)
        assert abs(n - mha) / mha <= 0.005, (G, d_ff, n, mha)
        if G == H:
            assert d_ff == base.d_ff  # MHA is its own target: nothing to widen
        else:
            assert d_ff > base.d_ff


def test_matched_width_rounding():
    # A multiple of 32 when one lands within 0.25 % of the MHA count, else of 8, else the nearest integer.
    assert matched_d_ff(_cfg(12, 768, 12, 6)) == 2304  # exact: 2048 + 2*64*6/3 = 2304
    assert matched_d_ff(_cfg(12, 768, 12, 1)) == 2520  # exact 2517.3: 2528 misses by 0.35 %, 2520 by 0.09 %
    assert matched_d_ff(_cfg(2, 128, 8, 1)) == 427  # exact 426.7: 416 misses by 2 %, 424 by 0.5 %


def test_a_fair_sweep_records_widths_and_reports_the_three_readings(tmp_path):
    from gqa_sweep.report import main as report
    from gqa_sweep.store.results import load_runs
    from tests.conftest import TINY, gqa_sweep

    results = tmp_path / "results"
    proc = gqa_sweep("-m", *TINY, f"results_dir={results}", "model.n_kv_heads=1,8", "model.param_match=none,ffn",
                     "optim.lr=3e-3,1e-2", "sweep=fair", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = load_runs(results)
    # 8 jobs, 6 computations: param_match=ffn at G = H widens nothing, so it is the plain MHA run, trained once
    assert len(runs) == 6 and proc.stdout.count("the same computation as job") == 2
    rows = runs[runs.lr == 3e-3].set_index(["param_match", "n_kv_heads"])
    assert rows.run_name["ffn", 1].endswith("-matchffn")
    mha, mqa = rows.n_params_non_embedding["none", 8], rows.n_params_non_embedding["ffn", 1]
    assert abs(mqa - mha) / mha <= 0.005
    assert rows.d_ff["ffn", 1] > rows.d_ff["none", 8] == 96  # tiny at d_model 32: 32 * ceil(85.3 / 32)
    assert report([str(results), "--out", str(tmp_path / "report")]) == 0
    fair = (tmp_path / "report" / "fair.md").read_text()
    assert "matched params: Δ vs MHA" in fair and fair.count("| tiny ") == 2


def test_an_unknown_matching_fails_in_one_line(tmp_path):
    from tests.conftest import TINY, gqa_sweep

    proc = gqa_sweep(*TINY, f"results_dir={tmp_path / 'r'}", "model.param_match=attn", cwd=tmp_path)
    assert proc.returncode == 1
    assert "param_match='attn'; choose from none, ffn" in proc.stderr
    assert not (tmp_path / "r").exists()

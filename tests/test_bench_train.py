"""gqa-bench train: the table's derived columns, and the HF copy it trains beside ours."""

from __future__ import annotations

import pytest
import torch

from gqa_sweep.bench.train import to_hf_for_training
from gqa_sweep.model.shape import ModelConfig, divisors
from gqa_sweep.model.transformer import DecoderLM
from tests.bench_helpers import assert_finite_positive, assert_header, run_quick


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    return run_quick("train", tmp_path_factory, "--repeats", "1")


def test_train_table(train):
    df, md = train
    assert df["G"].tolist() == divisors(4)
    assert_finite_positive(df)
    assert (df["peak_source"] == "measured").all()  # a CPU has no datasheet peak: it is measured (and cached)
    for impl in ("harness", "bare", "hf"):
        mfu = df[f"{impl}_tok_s"] * df["model_TFLOPs"] / df["harness_tok_s"] / df["peak_TFLOPs"]
        assert df[f"{impl}_mfu"].tolist() == pytest.approx(mfu.tolist(), rel=1e-9)
    assert df["harness_over_bare"].tolist() == pytest.approx((df["harness_tok_s"] / df["bare_tok_s"]).tolist())
    assert df["ours_over_hf"].tolist() == pytest.approx((df["bare_tok_s"] / df["hf_tok_s"]).tolist())
    for _, row in df.iterrows():
        cfg = ModelConfig(vocab_size=256, block_size=32, n_layers=2, d_model=64, n_heads=4, n_kv_heads=int(row.G))
        model = DecoderLM(cfg)
        assert row.params == model.num_params()
        fpt = 6 * model.num_params(non_embedding=True) + 12 * 2 * 4 * 16 * 32
        assert row.model_TFLOPs == pytest.approx(row.harness_tok_s * fpt / 1e12, rel=1e-9)
    assert_header(df, md)


@pytest.mark.parametrize("G", [1, 2, 4])
def test_hf_copy_has_identical_logits(G):
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=64, block_size=16, n_layers=2, d_model=32, n_heads=4, n_kv_heads=G))
    hf = to_hf_for_training(model)
    assert hf.config.num_key_value_heads == G and hf.config._attn_implementation == "sdpa"
    assert not hf.config.use_cache
    idx = torch.randint(64, (2, 16))
    torch.testing.assert_close(hf(input_ids=idx).logits, model(idx), rtol=1e-5, atol=1e-5)

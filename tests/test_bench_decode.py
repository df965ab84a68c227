"""gqa-bench decode: the table's derived columns, and the three decoders agreeing token for token."""

from __future__ import annotations

import pytest
import torch

from gqa_sweep.bench.common import first_tokens, random_cache, weight_bytes
from gqa_sweep.bench.decode import hf_copy, hf_decode_fn
from gqa_sweep.bench.steps import decode_fn, static_fn
from gqa_sweep.model.shape import ModelConfig, divisors
from gqa_sweep.model.transformer import DecoderLM
from tests.bench_helpers import assert_finite_positive, assert_header, run_quick


@pytest.fixture(scope="module")
def decode(tmp_path_factory):
    return run_quick("decode", tmp_path_factory)


def test_decode_table(decode):
    df, md = decode
    contexts, B = [16, 32], 2
    assert sorted(zip(df["G"], df["context"])) == [(G, c) for G in divisors(4) for c in contexts]
    assert_finite_positive(df, skip=("hbm_frac",))
    assert df["hbm_frac"].isna().all()  # no datasheet bandwidth for a CPU
    assert set(df.decode_impl) == {"folded"} and "graph_tok_s" not in df  # eager on the CPU: no graph column
    cfg = ModelConfig(vocab_size=256, block_size=34, n_layers=2, d_model=64, n_heads=4, n_kv_heads=1)
    expected = 2 * df["G"] * cfg.d_head * cfg.n_layers * df["context"] * B * 4  # fp32
    assert df["cache_MiB"].tolist() == pytest.approx((expected / 2**20).tolist(), rel=1e-12)
    per_token = (df["cache_MiB"] + df["weight_MiB"]) * 2**20 / B
    assert df["bytes_per_token"].tolist() == pytest.approx(per_token.tolist(), rel=1e-12)
    assert df["bytes_per_step"].tolist() == pytest.approx((per_token * B).tolist(), rel=1e-12)
    for impl in ("folded", "unfolded", "hf"):
        step = df[f"{impl}_ms_per_token"] / 1e3
        assert df[f"{impl}_tok_s"].tolist() == pytest.approx((B / step).tolist(), rel=1e-9)
        assert df[f"{impl}_GBps"].tolist() == pytest.approx((per_token * B / step / 1e9).tolist(), rel=1e-9)
    assert df["folded_over_hf"].tolist() == pytest.approx((df["folded_tok_s"] / df["hf_tok_s"]).tolist())
    assert df["frac_of_copy"].tolist() == pytest.approx((df["folded_GBps"] / df["copy_GBps"]).tolist())
    assert df["attn_hot_frac"].tolist() == pytest.approx((df["attn_hot_ms"] / df["attn_folded_ms"]).tolist())
    mha = df[df.G == 4].set_index("context")
    assert mha["vs_mha"].tolist() == [1.0, 1.0] and mha["attn_vs_proportional"].tolist() == [1.0, 1.0]
    ideal = df.context.map(mha.bytes_per_step) / df.bytes_per_step  # MHA's bytes per step over this G's
    assert df["ideal_vs_mha"].tolist() == pytest.approx(ideal.tolist()) and (df[df.G < 4].ideal_vs_mha > 1).all()
    assert df["vs_ideal"].tolist() == pytest.approx((df.vs_mha / ideal).tolist())
    assert (df.setup_s > 0).all()
    for _, row in df.iterrows():
        model = DecoderLM(ModelConfig(vocab_size=256, block_size=34, n_layers=2, d_model=64, n_heads=4,
                                      n_kv_heads=int(row.G)))  # fmt: skip
        assert row.weight_MiB * 2**20 == weight_bytes(model, 4)
        at_mha = mha.loc[row.context]
        assert row.attn_vs_proportional == pytest.approx(
            row.attn_folded_ms / (at_mha.attn_folded_ms * row.G / 4), rel=1e-9
        )
    assert_header(df, md)


@pytest.mark.parametrize("G", [1, 2, 4])
def test_folded_unfolded_and_hf_decode_the_same_tokens_from_the_same_cache(G):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, block_size=40, n_layers=2, d_model=32, n_heads=4, n_kv_heads=G)
    with torch.no_grad():  # large weights: well separated logits, so greedy choices are stable
        model = DecoderLM(cfg).eval()
        for p in model.parameters():
            p.normal_(0, 0.3)
    cache = random_cache(model, batch=3, ctx=20, seed=0)
    first = first_tokens(cfg, 3, seed=1, device="cpu")
    runs = {
        "folded": decode_fn(model, cache, first, new_tokens=8, fold=True),
        "unfolded": decode_fn(model, cache, first, new_tokens=8, fold=False),
        "hf": hf_decode_fn(hf_copy(model), cache, first, new_tokens=8),
    }
    out = {name: [run(), run()] for name, run in runs.items()}  # twice: every call restarts at 20 tokens
    for name, (a, b) in out.items():
        assert torch.equal(a, b), name
        assert torch.equal(a, out["folded"][0]), name
    assert out["folded"][0].shape == (3, 8) and out["folded"][0].unique().numel() > 3  # a real continuation
    assert cache.length == 28 and runs["hf"].cache.get_seq_length() == 20
    assert cache.k[0].shape == (3, G, 40, 8)  # G heads, never H
    assert cache.nbytes(20) == cfg.kv_bytes_per_token(4) * 20 * 3 == 2 * G * 8 * 2 * 20 * 3 * 4
    cache.length = 20  # the static step starts where the cache is now, and shares its buffers
    static = static_fn(model, cache, first, new_tokens=8, mode="eager")
    assert torch.equal(static(), out["folded"][0]) and torch.equal(runs["folded"](), out["folded"][0])


def test_roofline_draws_each_context_and_both_bandwidth_lines():
    import pandas as pd

    from gqa_sweep.bench.roofline import plot_roofline

    df = pd.DataFrame({"G": [1, 4, 1, 4], "context": [16, 16, 32, 32], "decode_impl": "graph",
                       "bytes_per_step": [1e9, 4e9, 2e9, 8e9], "graph_ms_per_token": [0.3, 1.0, 0.5, 2.0]})  # fmt: skip
    ax = plot_roofline(df, copy_bw=4e12, peak_bw=4.8e12, title="t").axes[0]
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["graph, context 16", "graph, context 32", "datasheet: 4800 GB/s", "measured copy: 4000 GB/s"]
    x, y = ax.lines[2].get_data()
    assert y == pytest.approx(x * 1e9 / 4.8e12 * 1e3)  # t = bytes / bandwidth, in ms
    cpu = plot_roofline(df, copy_bw=4e12, peak_bw=float("nan"), title="t").axes[0]  # no datasheet for a CPU
    assert [line.get_label() for line in cpu.lines][-1] == "measured copy: 4000 GB/s" and len(cpu.lines) == 3


def test_graph_mode_on_the_cpu_fails_early_naming_the_fix(tmp_path, capsys):
    from gqa_sweep.bench.cli import main

    for kind in ("decode", "serve"):
        assert main([kind, "--quick", "--device", "cpu", "--decode-mode", "graph", "--out", str(tmp_path)]) == 2
        assert "decode mode graph captures a CUDA graph, but the model is on cpu; use eager" in capsys.readouterr().err
    assert not (tmp_path / "decode.csv").exists()


def test_every_g_is_timed_together_only_when_all_fit_the_free_memory(monkeypatch):
    import argparse

    from gqa_sweep.bench import decode as bench
    from gqa_sweep.bench.common import make_env

    a = argparse.Namespace(model="llama-7b-layer", batch=16, new_tokens=4)
    env = make_env("cpu", "bf16")
    # 6 G x (ours + HF: 2 x 3.75 GB of weights) + 3 x the caches (MHA alone 16 GiB at 8k x 16): ~150 GB in all
    monkeypatch.setattr(bench, "free_memory_bytes", lambda device: 141e9)
    assert bench.g_groups(a, env, 8192) == [[1], [2], [4], [8], [16], [32]]
    monkeypatch.setattr(bench, "free_memory_bytes", lambda device: 200e9)
    assert bench.g_groups(a, env, 8192) == [[1, 2, 4, 8, 16, 32]]

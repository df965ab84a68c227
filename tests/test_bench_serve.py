"""gqa-bench serve: batches double until the budget is full; MHA stops first, where gqa-kv says it must."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from gqa_sweep.bench.cli import main
from gqa_sweep.bench.serve import batches
from gqa_sweep.model import kv_cli
from gqa_sweep.model.shape import ModelConfig, divisors
from gqa_sweep.model.transformer import DecoderLM
from tests.bench_helpers import assert_finite_positive, assert_header


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve")
    assert main(["serve", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    return pd.read_csv(out / "serve.csv"), (out / "serve.md").read_text(), out


def test_batches_double_then_end_at_the_largest_that_fits():
    assert batches(115, only_max=True) == [115]  # --batches max: a 7B table times each G's largest batch alone
    assert batches(1) == [1]
    assert batches(8) == [1, 2, 4, 8]
    assert batches(115) == [1, 2, 4, 8, 16, 32, 64, 115]


def test_serve_table_and_plot(serve):
    df, md, out = serve
    assert sorted(df.G.unique()) == divisors(4)
    assert_finite_positive(df.drop(columns=["kind", "max_vs_mha", "seed001_vs_mha"]))
    top = df[df.batch == df.max_batch].set_index("G")  # each G's largest batch: against MHA's, beside seed 001's
    assert top.max_vs_mha.tolist() == pytest.approx((top.tokens_per_s / top.tokens_per_s[4]).tolist())
    assert top.seed001_vs_mha[4] == 1.0 and top.seed001_vs_mha[1] == 5.0 and pd.isna(top.seed001_vs_mha[2])
    assert df[df.batch != df.max_batch][["max_vs_mha", "seed001_vs_mha"]].isna().all().all()
    for _G, t in df.groupby("G"):
        assert t.batch.tolist() == batches(int(t.max_batch.iloc[0]))
        assert (t.used_GB <= t.memory_bytes / 1e9).all()
    assert df.tokens_per_s.tolist() == pytest.approx((df.batch / (df.ms_per_token / 1e3)).tolist(), rel=1e-9)
    assert dict(zip(df.G, df.kind)) == {1: "MQA", 2: "GQA", 4: "MHA"}
    for name in ("serve.png", "serve.svg"):
        assert (out / name).stat().st_size > 1000
    assert_header(df, md)


def test_mha_stops_first_at_the_batch_gqa_kv_computes(serve, capsys):
    df, _, _ = serve
    largest = df.groupby("G").batch.max()
    assert largest[4] < largest[2] < largest[1]  # MHA < GQA < MQA
    for G, t in df.groupby("G"):
        # Not one more sequence fits: weights + (batch + 1) caches exceed the budget.
        cfg = ModelConfig(vocab_size=256, block_size=32, n_layers=2, d_model=64, n_heads=4, n_kv_heads=int(G))
        w, memory = DecoderLM(cfg).num_params() * 4, int(t.memory_bytes.iloc[0])
        assert int(t.weight_bytes.iloc[0]) == w
        per_seq = 2 * G * cfg.d_head * cfg.n_layers * 32 * 4
        assert w + largest[G] * per_seq <= memory < w + (largest[G] + 1) * per_seq
        # The gqa-kv CLI, same shape, budget and weights, prints the same max batch.
        assert kv_cli.main(["--layers", "2", "--heads", "4", "--kv-heads", str(G), "--head-dim", str(cfg.d_head),
                        "--seq", "32", "--dtype", "fp32", "--memory", str(memory), "--weights-bytes", str(w),
                        "--format", "csv"]) == 0  # fmt: skip
        table = pd.read_csv(io.StringIO(capsys.readouterr().out))
        assert table.set_index("G").loc[G, "max_batch"] == largest[G]

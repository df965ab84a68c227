"""gqa-bench decode / serve --attention: one row per type and G; the cache holds the formula's bytes per token."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from gqa_sweep.bench.cli import main
from gqa_sweep.model import kv_cli
from gqa_sweep.model.shape import ModelConfig
from gqa_sweep.model.transformer import DecoderLM

QUICK = ["--quick", "--device", "cpu", "--attention", "gqa", "gta", "mla", "--repeats", "1", "--warmup", "0"]


def tiny_cfg(attention: str, G: int) -> ModelConfig:  # the --quick preset: tiny at d_model 64, H = 4
    return ModelConfig(vocab_size=256, block_size=32, n_layers=2, d_model=64, n_heads=4, n_kv_heads=G,
                       attention=attention)  # fmt: skip


def test_decode_rows_per_variant_measure_the_formula_bytes(tmp_path) -> None:
    assert main(["decode", *QUICK, "--context", "8", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "decode.csv")
    cases = list(zip(df.attention, df.G.fillna(0).astype(int)))
    assert cases == [("gqa", 1), ("gqa", 2), ("gqa", 4), ("gta", 1), ("gta", 2), ("gta", 4), ("mla", 0)]
    for att, G, measured in zip(df.attention, df.G.fillna(4).astype(int), df.cache_bytes_per_token):
        assert measured == tiny_cfg(att, G).kv_bytes_per_token(4)  # fp32: elements per token x 4 bytes
    # The GLA paper's intensity model: GQA H/G, GTA 2H/G, MLA 2H (H = 4).
    assert df.ai_model.tolist() == [4, 2, 1, 8, 4, 2, 8]
    assert (df.kind == ["MQA", "GQA", "MHA", "GTA", "GTA", "GTA", "MLA"]).all()
    assert df.cache_vs_mha.tolist() == pytest.approx([0.25, 0.5, 1, 192 / 1024, 320 / 1024, 576 / 1024, 576 / 1024])


def test_serve_largest_batch_per_variant_is_what_gqa_kv_computes(tmp_path, capsys) -> None:
    assert main(["serve", *QUICK, "--context", "16", "--new-tokens", "1", "--memory", "700KB",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    capsys.readouterr()
    df = pd.read_csv(tmp_path / "serve.csv")
    largest = df.groupby("case").max_batch.first()
    for att, G, case in (("gqa", 4, "MHA G=4"), ("gta", 2, "GTA G=2"), ("mla", 1, "MLA")):
        cfg = tiny_cfg(att, G)
        w = DecoderLM(cfg).num_params() * 4
        assert largest[case] == (700_000 - w) // (cfg.kv_bytes_per_token(4) * 16)
        flags = [] if att == "gqa" else ["--attention", att]
        assert kv_cli.main([*flags, "--layers", "2", "--heads", "4", "--kv-heads", str(G), "--head-dim", "16",
                        "--seq", "16", "--dtype", "fp32", "--memory", "700000", "--weights-bytes", str(w),
                        "--format", "csv"]) == 0  # fmt: skip
        table = pd.read_csv(io.StringIO(capsys.readouterr().out))
        row = table.iloc[0] if att == "mla" else table.set_index("G").loc[G]
        assert row.max_batch == largest[case]

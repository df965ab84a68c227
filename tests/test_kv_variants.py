"""gqa-kv --attention gta|mla: the same formula as ModelConfig.kv_bytes_per_token; DeepSeek-V2's cache."""

from __future__ import annotations

import pytest

from gqa_sweep.model.kv_cli import main
from gqa_sweep.model.kv_variants import variant_table
from gqa_sweep.model.shape import ModelConfig

DEEPSEEK_V2 = ["--attention", "mla", "--layers", "60", "--heads", "128", "--head-dim", "128",
               "--kv-lora-rank", "512", "--rope-dim", "64", "--dtype", "bf16"]  # fmt: skip


def test_deepseek_v2_cache_is_576_elements_per_layer_gqa_with_2_25_groups(capsys) -> None:
    assert main([*DEEPSEEK_V2, "--seq", "1"]) == 0
    out = capsys.readouterr().out
    assert "MLA: d_c + d_R = 512 + 64 elements per token per layer (no G)" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("-"))
    assert row[:5] == ["-", "MLA", "576", "2.25", "69,120"]  # 60 layers x 576 x 2 bytes


@pytest.mark.parametrize("attention", ["gta", "mla"])
def test_table_bytes_equal_the_model_config_formula(attention) -> None:
    df = variant_table(attention, 3, 8, 16, seq_len=10, batch_size=2, bytes_per_element=4, n_kv_heads=2)
    for _, r in df.iterrows():
        G = 8 if r.G == "-" else r.G
        cfg = ModelConfig(vocab_size=8, block_size=8, n_layers=3, d_model=128, n_heads=8, n_kv_heads=G,
                          attention=attention)  # fmt: skip
        assert r.bytes_per_token == cfg.kv_bytes_per_token(4) and r.kv_bytes == r.bytes_per_token * 20
    assert list(df.G) == (["-"] if attention == "mla" else [1, 2, 4, 8])


def test_max_batch_and_gta_marks_its_own_g(capsys) -> None:
    df = variant_table("gta", 2, 4, 16, seq_len=100, batch_size=1, bytes_per_element=2, n_kv_heads=2,
                       memory_bytes=100_000, weights_bytes=10_000)  # fmt: skip
    assert list(df.own) == [False, True, False]
    assert list(df.max_batch) == [90_000 // ((G * 16 + 8) * 2 * 100 * 2) for G in (1, 2, 4)]


@pytest.mark.parametrize("argv,message", [
    (["--attention", "gta", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--rope-dim", "16"],
     "--rope-dim 16 must be in (0, --head-dim 16) for GTA; e.g. 8"),
    (["--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--rope-dim", "8"],
     "--rope-dim and --kv-lora-rank apply to --attention gta or mla; add --attention"),
    (["--attention", "gta", "--layers", "2", "--heads", "4", "--kv-heads", "2,1", "--head-dim", "16"],
     "--attention gta takes one --kv-heads G, not a per-layer list"),
])  # fmt: skip
def test_bad_variant_input_exits_2_with_one_line(capsys, argv, message) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(message)

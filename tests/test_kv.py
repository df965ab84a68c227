"""gqa-kv: KV-cache formula, presets, the printed table, max batch under --memory, and input errors."""

from __future__ import annotations

import io
import shutil
import subprocess

import pandas as pd
import pytest
import torch

from gqa_sweep.model.attention import KVCache
from gqa_sweep.model.kv import (
    DTYPE_BYTES,
    PRESETS,
    human_bytes,
    kv_cache_bytes,
    kv_table,
    max_batch_size,
    parse_bytes,
)
from gqa_sweep.model.kv_cli import main
from gqa_sweep.model.shape import ModelConfig

SEED_ARGS = ["--preset", "llama3-70b", "--seq", "8192", "--batch", "16", "--dtype", "fp16"]
# The seed figures (34.36 GB at G=8, 274.88 GB at G=64) are exactly 2^35 and 2^38 bytes:
# that is a 64-layer stack. Llama-3-70B's config.json has num_hidden_layers=80, so its preset gives
# 42.95 / 343.60 GB; the seed figures are reproduced with the 64-layer custom shape.
SEED_SHAPE_ARGS = ["--layers", "64", "--heads", "64", "--kv-heads", "8", "--head-dim", "128",
                   "--seq", "8192", "--batch", "16", "--dtype", "fp16"]


def table_rows(text: str) -> dict[str, list[str]]:
    """Rows of the plain-text table keyed by their G cell (e.g. '8*')."""
    rows = {}
    for line in text.splitlines():
        cells = line.split()
        if cells and cells[0].rstrip("*").isdigit():
            rows[cells[0]] = cells
    return rows


def run_main(capsys, argv: list[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def run_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    return err.strip().splitlines()[-1]


# ---------------------------------------------------------------- formula


def test_formula_matches_hand_computed_values():
    # Llama-3-70B, G=8, 8192 tokens, batch 16, fp16: 2*8*128*80*8192*16*2
    assert kv_cache_bytes(8, 128, 80, 8192, 16, 2) == 42_949_672_960
    # 64 layers: the 34.36 GB (= 32 GiB exactly)
    assert kv_cache_bytes(8, 128, 64, 8192, 16, 2) == 34_359_738_368 == 32 * 2**30
    # Mistral-7B per token in fp16: 2*8*128*32*2
    assert kv_cache_bytes(8, 128, 32, 1, 1, DTYPE_BYTES["fp16"]) == 131_072
    # int4 packs two elements per byte; an odd element count rounds up to a whole byte
    assert kv_cache_bytes(1, 3, 1, 1, 1, DTYPE_BYTES["int4"]) == 3
    assert kv_cache_bytes(1, 3, 1, 1, 1, 0.25) == 2


def test_formula_equals_bytes_allocated_by_the_model_cache():
    cfg = ModelConfig(vocab_size=64, block_size=24, n_layers=2, d_model=64, n_heads=8, n_kv_heads=2)
    cache = KVCache(cfg, batch_size=3, device="cpu", dtype=torch.bfloat16)
    allocated = sum(t.nelement() * t.element_size() for t in cache.k + cache.v)
    assert kv_cache_bytes(cfg.n_kv_heads, cfg.d_head, cfg.n_layers, cfg.block_size, 3, DTYPE_BYTES["bf16"]) == allocated


def test_formula_rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="seq_len must be a positive integer, got 0"):
        kv_cache_bytes(8, 128, 80, 0, 1, 2)


def test_presets_follow_the_public_configs():
    assert set(PRESETS) == {"llama2-70b", "llama3-8b", "llama3-70b", "mistral-7b", "qwen2.5-72b", "falcon-40b"}
    l70 = PRESETS["llama3-70b"]
    assert (l70.n_layers, l70.n_heads, l70.n_kv_heads, l70.d_head, l70.d_model) == (80, 64, 8, 128, 8192)
    falcon = PRESETS["falcon-40b"]  # config.json: new_decoder_architecture, num_kv_heads=8 (GQA, not MQA)
    assert (falcon.n_layers, falcon.n_heads, falcon.n_kv_heads, falcon.d_head) == (60, 128, 8, 64)
    for p in PRESETS.values():
        assert p.n_heads * p.d_head == p.d_model
        assert p.n_heads % p.n_kv_heads == 0
    assert PRESETS["llama3-8b"].weight_bytes("bf16") == 2 * 8_030_261_248


# ---------------------------------------------------------------- table


def test_kv_table_values_and_marked_row():
    df = kv_table(80, 64, 128, 8192, 16, "fp16", n_kv_heads=8)
    assert df["G"].tolist() == [1, 2, 4, 8, 16, 32, 64]
    assert df["group_size"].tolist() == [64, 32, 16, 8, 4, 2, 1]
    assert df["kind"].tolist() == ["MQA"] + ["GQA"] * 5 + ["MHA"]
    assert df.loc[df["own"], "G"].tolist() == [8]
    row = df.set_index("G")
    assert row.loc[8, "kv_bytes"] == 42_949_672_960
    assert row.loc[8, "kv_GiB"] == 40.0
    assert row.loc[8, "bytes_per_token"] == 327_680
    assert row.loc[8, "saved_pct"] == 87.5
    assert row.loc[64, "saved_pct"] == 0.0
    assert "max_batch" not in df


def test_kv_table_rejects_kv_heads_not_dividing_heads():
    with pytest.raises(ValueError, match=r"n_kv_heads=3 does not divide n_heads=8; choose one of: 1, 2, 4, 8"):
        kv_table(2, 8, 16, 128, 1, n_kv_heads=3)


def test_cli_prints_seed_numbers_for_the_64_layer_shape(capsys):
    rows = table_rows(run_main(capsys, SEED_SHAPE_ARGS))
    assert rows["8*"][4:9] == ["34.36", "GB", "32.00", "GiB", "87.50%"]
    assert rows["64"][4:9] == ["274.88", "GB", "256.00", "GiB", "0.00%"]


def test_cli_llama3_70b_table(capsys):
    out = run_main(capsys, SEED_ARGS)
    assert out.splitlines()[0] == ("llama3-70b: 80 layers, H=64 query heads, d_head=128; seq 8192, batch 16, "
                                   "fp16 (2 bytes/element); * = the model's own G (8)")
    rows = table_rows(out)
    assert list(rows) == ["1", "2", "4", "8*", "16", "32", "64"]  # only the model's own G is marked
    assert rows["8*"] == ["8*", "8", "GQA", "327,680", "42.95", "GB", "40.00", "GiB", "87.50%"]
    assert rows["1"] == ["1", "64", "MQA", "40,960", "5.37", "GB", "5.00", "GiB", "98.44%"]
    assert rows["64"] == ["64", "1", "MHA", "2,621,440", "343.60", "GB", "320.00", "GiB", "0.00%"]


def test_console_script_output_equals_main(capsys):
    exe = shutil.which("gqa-kv")
    assert exe is not None, "the gqa-kv console script is missing: pip install -e ."
    proc = subprocess.run([exe, *SEED_SHAPE_ARGS], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == run_main(capsys, SEED_SHAPE_ARGS)
    assert table_rows(proc.stdout)["8*"][4] == "34.36"
    bad = subprocess.run([exe, "--preset", "llama4"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "unknown preset 'llama4'" in bad.stderr


def test_markdown_and_csv_formats(capsys):
    md = run_main(capsys, [*SEED_ARGS, "--format", "md"])
    assert "|  8* |     8 | GQA    |       327,680 |   42.95 GB |         40.00 GiB |         87.50% |" in md
    csv = run_main(capsys, [*SEED_ARGS, "--format", "csv"]).splitlines()
    assert csv[0] == "G,group_size,kind,own,bytes_per_token,kv_bytes,kv_GB,kv_GiB,saved_pct"
    assert csv[4] == "8,8,GQA,True,327680,42949672960,42.94967296,40.0,87.5"


def test_custom_shape_with_int4(capsys):
    rows = table_rows(run_main(capsys, ["--layers", "2", "--heads", "6", "--kv-heads", "3", "--head-dim", "16",
                                        "--seq", "1000", "--dtype", "int4"]))
    assert list(rows) == ["1", "2", "3*", "6"]  # 2*3*16*2*0.5 = 96 bytes/token
    assert rows["3*"][:4] == ["3*", "2", "GQA", "96"]


def test_list_presets(capsys):
    lines = run_main(capsys, ["--list-presets"]).splitlines()
    assert len(lines) == 1 + len(PRESETS)
    falcon = next(line.split() for line in lines if line.split()[0] == "falcon-40b")
    assert falcon == ["falcon-40b", "60", "128", "8", "64", "8192", "41.84", "122,880", "tiiuae/falcon-40b"]


# ---------------------------------------------------------------- memory budget


def test_max_batch_hand_checked(capsys):
    # Llama-3-8B in fp16: weights 2 * 8,030,261,248 = 16,060,522,496 bytes; 80 GB leaves 63,939,477,504.
    # One 8192-token sequence at G=8: 2*8*128*32*8192*2 = 1,073,741,824 bytes -> 59 sequences (59.55);
    # at G=32 (MHA): 4,294,967,296 bytes -> 14 (14.89).
    out = run_main(capsys, ["--preset", "llama3-8b", "--seq", "8192", "--memory", "80GB"])
    rows = table_rows(out)
    assert rows["8*"][-1] == "59"
    assert rows["32"][-1] == "14"
    assert rows["1"][-1] == "476"  # 63,939,477,504 // 134,217,728
    assert "max batch in 80.00 GB" in out
    assert "weights (16.06 GB)" in out
    assert max_batch_size(80 * 10**9, 16_060_522_496, 8, 128, 32, 8192, 2) == 59


def test_max_batch_with_explicit_weights_in_gib(capsys):
    # 80 GiB, weights 16 GiB, G=8 sequence of 8192 tokens = 1 GiB -> exactly 64.
    rows = table_rows(run_main(capsys, ["--preset", "llama3-8b", "--seq", "8192", "--memory", "80GiB",
                                        "--weights-bytes", "16GiB"]))
    assert rows["8*"][-1] == "64"


def test_max_batch_zero_when_weights_do_not_fit(capsys):
    out = run_main(capsys, [*SEED_ARGS, "--memory", "80GB"])
    assert all(cells[-1] == "0" for cells in table_rows(out).values())
    assert ("note: the weights alone (141.11 GB) do not fit in 80.00 GB: max batch is 0 for every G; "
            "raise --memory, or use a smaller --dtype or --weights-bytes") in out


def test_custom_shape_memory_needs_explicit_weights(capsys):
    args = ["--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--seq", "100",
            "--memory", "1MB"]
    assert run_error(capsys, args) == ("gqa-kv: error: a custom shape has no parameter count: "
                                       "pass --weights-bytes N (0 counts the KV cache only)")
    # KV only: 1,000,000 // (2*2*16*2*100*2 = 25,600) = 39
    assert table_rows(run_main(capsys, [*args, "--weights-bytes", "0"]))["2*"][-1] == "39"


def test_parse_bytes_units():
    assert parse_bytes("80GB") == 80 * 10**9
    assert parse_bytes("80GiB") == 80 * 2**30
    assert parse_bytes("141e9") == 141 * 10**9
    assert parse_bytes("1.5 TB") == 1_500_000_000_000
    assert parse_bytes("512mib") == 512 * 2**20


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "llama4"], "gqa-kv: error: argument --preset: unknown preset 'llama4'; choose one of: "
                                 "llama2-70b, llama3-8b, llama3-70b, mistral-7b, qwen2.5-72b, falcon-40b"),
        ([*SEED_ARGS[:6], "--dtype", "fp64"], "gqa-kv: error: argument --dtype: unknown dtype 'fp64'; "
                                              "choose one of: fp32, fp16, bf16, fp8, int8, int4"),
        (["--preset", "llama3-8b", "--seq", "0"], "gqa-kv: error: argument --seq: expected a positive integer, got '0'"),
        (["--preset", "llama3-8b", "--batch", "-4"],
         "gqa-kv: error: argument --batch: expected a positive integer, got '-4'"),
        (["--layers", "2", "--heads", "8", "--kv-heads", "3", "--head-dim", "16"],
         "gqa-kv: error: --kv-heads 3 does not divide --heads 8; choose one of: 1, 2, 4, 8"),
        (["--layers", "2", "--heads", "8"], "gqa-kv: error: custom shape is incomplete: add --kv-heads --head-dim"),
        ([], "gqa-kv: error: give --preset NAME (one of: llama2-70b, llama3-8b, llama3-70b, mistral-7b, "
             "qwen2.5-72b, falcon-40b) or all of --layers --heads --kv-heads --head-dim"),
        (["--preset", "llama3-8b", "--layers", "4"],
         "gqa-kv: error: give either --preset or the shape flags, not both (drop --layers)"),
        (["--preset", "llama3-8b", "--memory", "80G"],
         "gqa-kv: error: argument --memory: cannot parse '80G' as a byte count; write e.g. 80GB, 80GiB, 141e9 "
         "(units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
        (["--preset", "llama3-8b", "--memory", "0GB"],
         "gqa-kv: error: argument --memory: expected a positive byte count, got '0GB'"),
        (["--preset", "llama3-8b", "--weights-bytes", "1GB"],
         "gqa-kv: error: --weights-bytes only applies with --memory: add --memory, e.g. --memory 80GB"),
    ],
)
def test_bad_input_exits_2_with_a_one_line_fix(capsys, argv, message):
    assert run_error(capsys, argv) == message


def test_small_caches_get_a_unit_that_shows_them():
    """A tiny model's cache is kilobytes: it must not print as 0.00 GB."""
    assert human_bytes(512) == "512 B"
    assert human_bytes(2_048 * 128 * 8) == "2.10 MB"
    assert human_bytes(2_048 * 128 * 8, binary=True) == "2.00 MiB"
    assert human_bytes(34_359_738_368) == "34.36 GB"
    assert human_bytes(999) == "999 B" and human_bytes(1_000) == "1.00 KB"


def test_cli_on_a_tiny_model_prints_kilobytes(capsys):
    out = run_main(capsys, ["--layers", "2", "--heads", "8", "--kv-heads", "2", "--head-dim", "16", "--seq", "128",
                            "--batch", "1"])
    rows = table_rows(out)
    # 2 (K, V) * G * d_head 16 * 2 layers * 128 tokens * 2 bytes (fp16)
    assert rows["2*"][4:8] == ["32.77", "KB", "32.00", "KiB"]
    assert " GB" not in out  # no 0.00 GB


def test_per_layer_layout_row_matches_the_formula(capsys):
    assert main(["--layers", "4", "--heads", "8", "--kv-heads", "4,2,1,1", "--head-dim", "16", "--seq", "128",
                 "--batch", "2", "--memory", "1MB", "--weights-bytes", "0", "--format", "csv"]) == 0  # fmt: skip
    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    row = df[df.kind == "per-layer"].iloc[0]
    assert row.G == "4,2,1,1" and bool(row.own)
    expected = 2 * (4 + 2 + 1 + 1) * 16 * 2 * 128 * 2  # 2 * sum_l G_l * d_head * bytes * seq * batch
    assert row.kv_bytes == expected and row.bytes_per_token == 2 * 8 * 16 * 2
    assert row.max_batch == 10**6 // (expected // 2)
    assert row.saved_pct == pytest.approx(100 * (1 - 8 / 32))
    assert (df.own == False).sum() == 4  # noqa: E712  (every uniform G is listed beside it, none marked)


def test_per_layer_layout_errors_name_the_layer(capsys):
    with pytest.raises(SystemExit):
        main(["--layers", "2", "--heads", "8", "--kv-heads", "4,3", "--head-dim", "16"])
    assert "--kv-heads 3 (layer 1) does not divide --heads 8; choose one of: 1, 2, 4, 8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--layers", "4", "--heads", "8", "--kv-heads", "4,2,1", "--head-dim", "16"])
    assert "gives 3 layers' G but --layers is 4; give one G per layer" in capsys.readouterr().err

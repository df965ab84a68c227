"""gqa-bench: each subcommand's --quick run writes the table it promises; derived columns are exact."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from gqa_sweep import bench
from gqa_sweep.model import DecoderLM, ModelConfig, divisors

META = ["device", "dtype", "torch", "date"]


def run_quick(kind: str, tmp_path_factory, *extra: str) -> tuple[pd.DataFrame, str]:
    out = tmp_path_factory.mktemp(kind)
    assert bench.main([kind, "--quick", "--device", "cpu", "--out", str(out), *extra]) == 0
    return pd.read_csv(out / f"{kind}.csv"), (out / f"{kind}.md").read_text()


def assert_finite_positive(df: pd.DataFrame, skip: tuple[str, ...] = ()) -> None:
    numeric = df.select_dtypes("number").drop(columns=list(skip))
    assert numeric.shape[1] > 0
    assert (numeric.map(math.isfinite)).all().all(), numeric
    assert (numeric > 0).all().all(), numeric


def assert_header(df: pd.DataFrame, md: str) -> None:
    assert list(df.columns[-4:]) == META
    name = bench.make_env("cpu", "fp32").device_name
    assert name.startswith("CPU") and df["device"].iloc[0] == name and df["dtype"].iloc[0] == "fp32"
    assert df["torch"].iloc[0] == torch.__version__
    assert f"device: {name} | dtype: fp32 | torch: {torch.__version__}" in md
    assert df["date"].iloc[0] in md


@pytest.fixture(scope="module")
def attention(tmp_path_factory):
    return run_quick("attention", tmp_path_factory)


@pytest.fixture(scope="module")
def decode(tmp_path_factory):
    return run_quick("decode", tmp_path_factory)


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    return run_quick("train", tmp_path_factory, "--repeats", "1")


def test_attention_table(attention):
    df, md = attention
    assert df["G"].tolist() == divisors(4)  # quick: H=4
    assert (df["G"] * df["group_size"] == 4).all()
    assert_finite_positive(df)
    assert df["time_ratio"].tolist() == pytest.approx((df["grouped_ms"] / df["reference_ms"]).tolist(), rel=1e-9)
    assert df["mem_ratio"].tolist() == pytest.approx(
        (df["grouped_peak_MiB"] / df["reference_peak_MiB"]).tolist(), rel=1e-9
    )
    assert (df["grouped_min_ms"] <= df["grouped_ms"]).all() and (df["grouped_ms"] <= df["grouped_max_ms"]).all()
    assert_header(df, md)
    assert md.count("\n|") == 2 + len(df)  # header row, rule, one row per G


@pytest.mark.parametrize("G", [1, 2, 8])
def test_grouped_attention_equals_repeat_kv_reference(G):
    env = bench.make_env("cpu", "fp32")
    q, k, v, dy = bench.attention_inputs(2, 16, 8, G, 8, env, seed=0)
    fns = bench.attention_fns(q, k, v, dy)
    y_ref = fns["reference"]()
    grads_ref = [t.grad.clone() for t in (q, k, v)]
    y = fns["grouped"]()
    torch.testing.assert_close(y, y_ref)
    for t, g in zip((q, k, v), grads_ref):
        assert t.grad.shape == g.shape  # K/V gradients stay at G heads in both
        torch.testing.assert_close(t.grad, g)


def test_decode_table(decode):
    df, md = decode
    contexts, B, new = [16, 32], 2, 4
    assert sorted(zip(df["G"], df["context"])) == [(G, c) for G in divisors(4) for c in contexts]
    assert_finite_positive(df, skip=("hbm_frac",))
    assert df["hbm_frac"].isna().all()  # no peak bandwidth known for a CPU
    cfg = ModelConfig(vocab_size=256, block_size=max(contexts) + new, n_layers=2, d_model=64, n_heads=4, n_kv_heads=1)
    expected = 2 * df["G"] * cfg.d_head * cfg.n_layers * df["context"] * B * 4  # fp32
    assert df["cache_bytes"].tolist() == expected.tolist()
    assert df["cache_MiB"].tolist() == pytest.approx((expected / 2**20).tolist(), rel=1e-12)
    assert df["tokens_per_s"].tolist() == pytest.approx((B / (df["ms_per_token"] / 1e3)).tolist(), rel=1e-9)
    bw = (df["weight_MiB"] * 2**20 + df["cache_bytes"]) / (df["ms_per_token"] / 1e3) / 1e9
    assert df["achieved_GBps"].tolist() == pytest.approx(bw.tolist(), rel=1e-9)
    # Fewer KV heads, smaller cache per sequence, so at least as large a batch fits.
    for _, g in df.groupby("context"):
        assert g.sort_values("G")["max_batch"].is_monotonic_decreasing
    assert_header(df, md)


def test_decode_cache_holds_g_heads_and_restarts_at_context():
    cfg = ModelConfig(vocab_size=64, block_size=24, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2)
    model = DecoderLM(cfg).eval()
    run = bench.decode_fn(model, batch=3, ctx=10, new_tokens=5, seed=0)
    first, second = run(), run()
    assert run.cache.k[0].shape == (3, 2, 24, 8) and run.cache.length == 15
    torch.testing.assert_close(first, second)  # every call decodes from the same cached context
    assert run.cache.nbytes(10) == bench.cache_bytes(cfg, 3, 10, 4) == 2 * 2 * 8 * 2 * 10 * 3 * 4


def test_train_table(train):
    df, md = train
    assert df["G"].tolist() == divisors(4)
    assert_finite_positive(df, skip=("mfu",))
    assert df["mfu"].isna().all()  # no CPU peak FLOP/s: model FLOP/s is reported instead
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
    hf = bench.to_hf_for_training(model)
    assert hf.config.num_key_value_heads == G and hf.config._attn_implementation == "sdpa"
    assert not hf.config.use_cache
    idx = torch.randint(64, (2, 16))
    torch.testing.assert_close(hf(input_ids=idx).logits, model(idx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name, hbm",
    [
        ("NVIDIA H100 80GB HBM3", 3.35e12),
        ("NVIDIA H100 PCIe", 2.0e12),
        ("NVIDIA H200", 4.8e12),
        ("NVIDIA A100-SXM4-80GB", 2.0e12),
        ("NVIDIA A100 80GB PCIe", 2.0e12),
        ("NVIDIA A100-PCIE-40GB", 1.555e12),
        ("CPU: AMD EPYC 7B13", math.nan),
    ],
)
def test_peak_bandwidth_table(name, hbm):
    assert bench.peak_bandwidth(name) == pytest.approx(hbm, nan_ok=True)


def test_cpu_peak_memory_counts_live_tensors():
    def fn():
        a = torch.empty(1 << 20)  # 4 MiB
        b = torch.empty(1 << 19)  # 2 MiB, both live: 6 MiB
        del a
        c = torch.empty(1 << 18)  # 1 MiB after 4 MiB freed: peak stays 6 MiB
        return b, c

    assert bench.peak_memory(fn, torch.device("cpu")) == 6 * 2**20


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--quick", "--dtype", "fp16"], "train supports --dtype fp32 or bf16"),
        (["train", "--quick", "--warmup", "0"], "train needs --warmup >= 1"),
        (["train", "--quick", "--seq", "999"], "--seq 999 exceeds the tiny block_size=256"),
        (["decode", "--quick", "--n-heads", "3"], "d_model=64 is not divisible by n_heads=3"),
    ],
)
def test_bad_options_fail_early_with_the_fix(argv, message, capsys, tmp_path):
    assert bench.main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_request_without_cuda_names_the_fix(capsys):
    assert bench.main(["attention", "--quick", "--device", "cuda"]) == 2
    assert "use --device cpu" in capsys.readouterr().err


def test_argparse_rejects_non_positive_repeats():
    with pytest.raises(SystemExit) as e:
        bench.main(["attention", "--repeats", "0"])
    assert e.value.code == 2

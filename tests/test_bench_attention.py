"""gqa-bench attention: the table's derived columns, and grouped SDPA equal to the repeat-KV reference."""

from __future__ import annotations

import pytest
import torch

from gqa_sweep.bench.attention import attention_fns, attention_inputs, decode_attention_fns
from gqa_sweep.bench.common import make_env
from gqa_sweep.model.shape import divisors
from tests.bench_helpers import assert_finite_positive, assert_header, run_quick


@pytest.fixture(scope="module")
def attention(tmp_path_factory):
    return run_quick("attention", tmp_path_factory)


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
    env = make_env("cpu", "fp32")
    q, k, v, dy = attention_inputs(2, 16, 8, G, 8, env, seed=0)
    fns = attention_fns(q, k, v, dy)
    y_ref = fns["reference"]()
    grads_ref = [t.grad.clone() for t in (q, k, v)]
    y = fns["grouped"]()
    torch.testing.assert_close(y, y_ref)
    for t, g in zip((q, k, v), grads_ref):
        assert t.grad.shape == g.shape  # K/V gradients stay at G heads in both
        torch.testing.assert_close(t.grad, g)


@pytest.mark.parametrize("G", [1, 2, 4, 8])
def test_folded_decode_attention_equals_enable_gqa(G):
    fns = decode_attention_fns(batch=3, heads=8, groups=G, ctx=37, d_head=16, env=make_env("cpu", "fp32"), seed=0)
    folded, grouped = fns["folded"](), fns["enable_gqa"]()
    assert folded.shape == (3, G, 8 // G, 16) and grouped.shape == (3, 8, 1, 16)
    torch.testing.assert_close(folded.reshape(3, 8, 1, 16), grouped, rtol=1e-5, atol=1e-6)
    # The arithmetic-only timing does the first sequence's work: the batch call's first row, up to the kernel's
    # blocking (a batch of 1 may sum in another order: 3e-8 apart on an AMD EPYC, bit-equal on an Intel Xeon).
    torch.testing.assert_close(fns["folded_hot"](), folded[:1], rtol=1e-6, atol=1e-7)

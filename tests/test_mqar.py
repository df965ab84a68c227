"""MQAR: the generator's invariants, a hand-checked case, the data module, the config errors, recall metrics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from gqa_sweep.data import DataError, MQARDataModule
from gqa_sweep.data.mqar import IGNORE, Segment, multiquery_ar, power_law
from gqa_sweep.store.val_stats import ValStats


def check_invariants(x: np.ndarray, y: np.ndarray, V: int, T: int, K: int, random_filler: bool) -> None:
    half = V // 2
    assert x.shape == y.shape == (len(x), T)
    assert x.min() >= 0 and x.max() < V
    for row, lab in zip(x, y):
        keys, values = row[0 : 2 * K : 2], row[1 : 2 * K : 2]
        assert len(set(keys)) == K and len(set(values)) == K  # drawn without replacement
        assert keys.min() >= 1 and keys.max() <= half - 1
        assert values.min() >= half and values.max() <= V - 1
        q = np.flatnonzero(lab != IGNORE)
        assert len(q) == K and q.min() >= 2 * K and np.all((q - 2 * K) % 2 == 0)  # after the context, slot starts
        assert sorted(row[q]) == sorted(keys)  # every key queried exactly once
        pair = dict(zip(keys, values))
        assert [pair[k] for k in row[q]] == list(lab[q])  # the label of a query is its key's value
        if not random_filler:
            rest = np.ones(T, bool)
            rest[: 2 * K] = False
            rest[q] = False
            assert np.all(row[rest] == 0)


@pytest.mark.parametrize("V,T,K,random_filler", [(64, 32, 8, False), (256, 64, 4, True), (40, 36, 9, True)])
def test_generator_invariants(V, T, K, random_filler):
    x, y = multiquery_ar(V, 200, T, K, seed=(3, 0, 0), random_non_queries=random_filler)
    check_invariants(x, y, V, T, K, random_filler)


def test_small_case_by_hand():
    # V=14: keys from {1 .. 6}, values from {7 .. 13}. T=12, K=2: the context k1 v1 k2 v2 (positions 0-3), then
    # 4 two-token slots starting at positions 4, 6, 8, 10; each key is queried at the start of one slot.
    x, y = multiquery_ar(14, 2, 12, 2, seed=0, random_non_queries=False)
    assert x.tolist() == [[5, 9, 4, 8, 5, 0, 0, 0, 4, 0, 0, 0], [4, 10, 6, 13, 0, 0, 4, 0, 0, 0, 6, 0]]
    # Read off by hand: example 0 stores 5->9, 4->8 and queries 5 in slot 0 (position 4, answer 9) and 4 in
    # slot 2 (position 8, answer 8); example 1 stores 4->10, 6->13 and queries 4 at position 6 and 6 at 10.
    X = IGNORE
    assert y.tolist() == [[X, X, X, X, 9, X, X, X, 8, X, X, X], [X, X, X, X, X, X, 10, X, X, X, 13, X]]
    # Random filler replaces exactly the zeros (here by tokens from the whole vocabulary, 0 included).
    xr, yr = multiquery_ar(14, 2, 12, 2, seed=0, random_non_queries=True)
    assert np.array_equal(yr, y) and np.array_equal(xr[x != 0], x[x != 0])
    assert xr.tolist() == [[5, 9, 4, 8, 5, 3, 11, 9, 4, 0, 5, 12], [4, 10, 6, 13, 7, 0, 4, 10, 10, 11, 6, 2]]


def test_gaps_follow_the_power_law():
    p = power_law(4, 0.01)
    assert p.sum() == pytest.approx(1.0)
    assert p[0] / p[1] == pytest.approx(2**0.99) and p[0] / p[3] == pytest.approx(4**0.99)
    # Queries crowd near the context: with 1 key in 30 slots, gap 0 is drawn with probability p[0] ~ 0.25.
    _, y = multiquery_ar(128, 4000, 62, 1, seed=1)
    first = (np.flatnonzero(y.reshape(-1) != IGNORE) % 62 - 2) // 2
    assert abs((first == 0).mean() - power_law(30, 0.01)[0]) < 0.03


def test_determinism_and_seeds():
    a = multiquery_ar(128, 50, 32, 4, seed=(0, 0, 0))
    b = multiquery_ar(128, 50, 32, 4, seed=(0, 0, 0))
    c = multiquery_ar(128, 50, 32, 4, seed=(0, 1, 0))
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0])


# ---------------------------------------------------------------------------------------------- data module


def dm_(tmp_path, **kw) -> MQARDataModule:
    kw = {"vocab_size": 128, "num_train": 300, "num_test": 40, "batch_size": 8, "max_steps": 6,
          "cache_dir": str(tmp_path / "cache"), **kw}
    dm = MQARDataModule(**kw)
    dm.prepare()
    return dm


SEGS = dict(train_segments=[[32, 4], [64, 8]], test_segments=[[32, 4], [64, 8], [64, 16]], block_size=64)


def test_train_and_test_are_disjoint_and_cached(tmp_path):
    dm = dm_(tmp_path, **SEGS)
    assert not dm.cache_hit
    seeds = {dm.spec.seed_of(0, i) for i in range(2)} | {dm.spec.seed_of(1, i) for i in range(3)}
    assert len(seeds) == 5  # every segment of every split has its own seed
    for (xtr, _), (xte, _) in zip(dm.train_data, dm.test_data):
        train_rows = {tuple(r) for r in xtr.tolist()}
        assert not any(tuple(r) in train_rows for r in xte.tolist())
    again = dm_(tmp_path, **SEGS)
    assert again.cache_hit and again.cache_path == dm.cache_path
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(dm.test_data, again.test_data))
    other = dm_(tmp_path, gen_seed=1, **SEGS)
    assert other.cache_path != dm.cache_path and not torch.equal(other.train_data[0][0], dm.train_data[0][0])


def test_batches_single_segment_and_seeded(tmp_path):
    def train_batches(seed):
        return list(dm_(tmp_path, seed=seed, **SEGS).train_dataloader())

    a, b, c = train_batches(0), train_batches(0), train_batches(1)
    assert len(a) == 6 and {x.shape[1] for x, _ in a} <= {32, 64}
    assert all(torch.equal(u[0], v[0]) for u, v in zip(a, b))
    assert not all(torch.equal(u[0], v[0]) for u, v in zip(a, c) if u[0].shape == v[0].shape)
    for x, y in a:
        assert x.shape == y.shape and ((y != IGNORE).sum(1) == {32: 4, 64: 8}[x.shape[1]]).all()
    val = list(dm_(tmp_path, **SEGS).val_dataloader())
    assert sum(len(x) for x, _, _ in val) == 3 * 40
    for x, _, seg in val:  # a batch never mixes segments, and knows its segment
        assert len(set(seg.tolist())) == 1 and x.shape[1] == [32, 64, 64][int(seg[0])]


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(seq_len=64, num_kv_pairs=17),
         "data.train_segments [64, 17]: 4 * num_kv_pairs = 68 > seq_len=64 (the context takes 2K tokens and the K "
         "queries another 2K); use num_kv_pairs <= 16 or seq_len >= 68"),
        (dict(seq_len=63, num_kv_pairs=4),
         "data.train_segments [63, 4]: seq_len=63 is odd; queries take two-token slots, use an even seq_len, e.g. 64"),
        (dict(vocab_size=64, seq_len=64),
         "data.vocab_size=64 must exceed seq_len=64 (data.train_segments [64, 4]); use data.vocab_size>=65"),
        (dict(vocab_size=66, seq_len=128, num_kv_pairs=32, block_size=128, test_segments=[[64, 4]]),
         "data.vocab_size=66 must exceed seq_len=128 (data.train_segments [128, 32]); use data.vocab_size>=129"),
        (dict(block_size=32), "data.block_size=32 is shorter than the longest MQAR segment (64 tokens); "
                              "set data.block_size=64"),
        (dict(test_segments=[64, 4]), "data.test_segments=[64, 4] must be a list of [seq_len, num_kv_pairs] pairs, "
                                      "e.g. data.test_segments=[[64,4],[128,8]]"),
        (dict(num_kv_pair=4), "data.num_kv_pair is not a setting of data=mqar; its settings are vocab_size, seq_len, "
                              "num_kv_pairs, train_segments, test_segments, num_train, num_test, power_a, "
                              "random_non_queries, gen_seed, source, block_size, batch_size, seed, max_steps, "
                              "cache_dir, num_workers, allow_repeats"),
    ],
)
def test_bad_settings_fail_with_the_fix(kw, message):
    kw = {"vocab_size": 128, "block_size": 64, **kw}
    with pytest.raises(DataError) as e:
        MQARDataModule(**kw)
    assert str(e.value) == message


def test_k_over_half_vocab():
    with pytest.raises(DataError, match=r"num_kv_pairs=40 > V/2 - 1 = 39 distinct keys of data.vocab_size=80; "
                                        r"use data.vocab_size>=82"):
        MQARDataModule(vocab_size=80, seq_len=160, num_kv_pairs=40, block_size=160)


# ------------------------------------------------------------------------------------------------- metrics


def test_val_stats_recall_and_position_buckets():
    V, T = 10, 8
    y = torch.full((3, T), IGNORE)
    y[0, 4], y[0, 6], y[1, 4], y[2, 2] = 7, 8, 9, 5
    logits = torch.zeros(3, T, V)
    logits[0, 4, 7] = logits[0, 6, 1] = logits[1, 4, 9] = logits[2, 2, 5] = 1.0  # 3 of 4 queries right
    tok_loss = torch.zeros(3, T)
    tok_loss[0, 4], tok_loss[0, 6], tok_loss[1, 4], tok_loss[2, 2] = 1.0, 3.0, 2.0, 4.0
    stats = ValStats(block_size=T)
    stats.update(tok_loss, logits, y, seg=torch.tensor([0, 0, 1]))
    row = stats.row([Segment(8, 2), Segment(8, 1)])
    assert row["recall_acc"] == 0.75
    per = json.loads(row["recall_acc_by_segment"])
    assert [(p["segment"], p["acc"], p["n"]) for p in per] == [("T8-K2", 2 / 3, 3), ("T8-K1", 1.0, 1)]
    # 8 buckets of one position each: mean loss over the labelled positions in it, None where none is labelled.
    assert json.loads(row["val_loss_by_pos"]) == [None, None, 4.0, None, 1.5, None, 3.0, None]
    stats.reset()
    stats.update(torch.arange(16.0).view(2, 8), logits[:2], torch.zeros(2, 8, dtype=torch.long), None)
    assert stats.loss_by_position(4) == [(0 + 1 + 8 + 9) / 4, (2 + 3 + 10 + 11) / 4, 8.5, 10.5]
    assert "recall_acc" not in stats.row(None)


# --------------------------------------------------------------------------------------------- end to end

MQAR_TINY = [
    "data=mqar", "data.vocab_size=64", "data.num_train=200", "data.num_test=16", "model.n_heads=2",
    "data.train_segments=[[16,2],[32,4]]", "data.test_segments=[[16,2],[32,4],[32,8]]", "data.block_size=32",
    "data.batch_size=4",
]


def test_mqar_sweep_rows_and_report(tmp_path):
    from gqa_sweep.report import main as report_main
    from gqa_sweep.store.results import load_runs
    from tests.conftest import TINY, gqa_sweep

    results = tmp_path / "results"
    tiny = [o for o in TINY if not o.startswith("data.")]  # text-only keys (val_batches) do not exist for MQAR
    proc = gqa_sweep("-m", *tiny, *MQAR_TINY, "model.n_kv_heads=all", "optim.lr=1e-3,3e-3", "sweep=recall",
                     f"results_dir={results}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = load_runs(results)
    assert len(runs) == 4 and set(runs.status) == {"completed"} and set(runs.data_name) == {"mqar"}
    for r in runs.itertuples():
        per = json.loads(r.recall_acc_by_segment)
        assert [p["segment"] for p in per] == ["T16-K2", "T32-K4", "T32-K8"]
        assert [p["n"] for p in per] == [16 * 2, 16 * 4, 16 * 8]  # every query of the test set, once
        acc = sum(p["acc"] * p["n"] for p in per) / sum(p["n"] for p in per)
        assert r.recall_acc == pytest.approx(acc) and 0 <= r.recall_acc <= 1
        assert len(json.loads(r.val_loss_by_pos)) == 8
    assert report_main([str(results), "--plots"]) == 0
    out = results / "report"
    table = pd.read_csv(out / "recall.csv")
    assert len(table) == 2 * 3 and set(table.test_only) == {False, True}
    assert (out / "recall_vs_G.png").exists() and "T32-K8 (test only)" in (out / "recall.md").read_text()


def test_text_runs_carry_loss_by_position(tiny_sweep):
    from gqa_sweep.store.results import load_runs

    runs = load_runs(tiny_sweep)
    for r in runs.itertuples():
        buckets = json.loads(r.val_loss_by_pos)
        assert len(buckets) == 8 and all(b > 0 for b in buckets) and pd.isna(r.recall_acc)


@pytest.mark.parametrize("override,message", [
    ("data.num_kv_pairs=20", "data.train_segments [64, 20]: 4 * num_kv_pairs = 80 > seq_len=64 (the context takes "
                             "2K tokens and the K queries another 2K); use num_kv_pairs <= 16 or seq_len >= 80"),
    ("data.vocab_size=64", "data.vocab_size=64 must exceed seq_len=64 (data.train_segments [64, 4]); "
                           "use data.vocab_size>=65"),
    ("data.seq_len=63", "data.train_segments [63, 4]: seq_len=63 is odd; queries take two-token slots, use an even "
                        "seq_len, e.g. 64"),
])
def test_bad_mqar_settings_fail_before_anything_is_written(tmp_path, override, message):
    from tests.conftest import gqa_sweep

    for multirun in ([], ["-m", "model.n_kv_heads=1,2"]):
        proc = gqa_sweep(*multirun, "data=mqar", override, f"results_dir={tmp_path / 'results'}", cwd=tmp_path)
        assert proc.returncode != 0
        assert [line for line in proc.stderr.splitlines() if line.strip()] == [message], proc.stderr[-2000:]
        assert not (tmp_path / "results").exists()

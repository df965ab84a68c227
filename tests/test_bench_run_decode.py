"""The per-run decode measurement: what it times, and the row columns that say what it measured."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gqa_sweep.model.shape import ModelConfig
from gqa_sweep.model.transformer import DecoderLM
from gqa_sweep.store.results import load_runs
from gqa_sweep.train.metrics import decode_tokens_per_s
from tests.conftest import TINY, gqa_sweep


def test_decode_tokens_per_s_times_steps_only_and_rejects_overflow(one_thread) -> None:
    model = DecoderLM(ModelConfig(vocab_size=64, block_size=24, n_layers=1, d_model=32, n_heads=4, n_kv_heads=2))
    prompt = torch.randint(64, (2, 16))
    assert 0 < decode_tokens_per_s(model, prompt, 8, repeats=2) < math.inf  # fills the cache to block_size
    with pytest.raises(ValueError, match=r"prompt \(16\) \+ new_tokens \(9\) must be in \[T\+1, block_size=24\]"):
        decode_tokens_per_s(model, prompt, 9)


def test_row_records_decode_batch_and_context_and_fill_cache_fills_it(tiny_sweep: Path, tmp_path: Path) -> None:
    runs = load_runs(tiny_sweep)
    assert set(runs.decode_batch) == {2} and set(runs.decode_context) == {4 + 8}  # prompt + new tokens
    results = tmp_path / "results"
    proc = gqa_sweep(*TINY, "model.n_kv_heads=2", "metrics.decode_fill_cache=true", f"results_dir={results}",
                     cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = load_runs(results).iloc[0]
    assert row.decode_context == 32 and row.decode_batch == 2  # data.block_size=32: the cache ends full
    assert row.decode_tokens_per_s > 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("metrics.decode_batch=0", "metrics.decode_batch=0 must be a positive integer"),
        ("metrics.decode_fill_cache=maybe", "metrics.decode_fill_cache=maybe must be true or false"),
    ],
)
def test_bad_decode_settings_fail_before_training(override: str, message: str, tmp_path: Path) -> None:
    proc = gqa_sweep(*TINY, override, f"results_dir={tmp_path / 'results'}", cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / "results" / "runs.sqlite").exists()


@pytest.mark.parametrize(
    "block, new, prompt, fill, expected",
    [
        (128, 64, 16, False, (8, 16, 64)),  # the defaults: 16-token prompt, 64 new tokens
        (64, 64, 16, False, (8, 16, 32)),  # new tokens capped at half the block (MQAR's default block)
        (64, 64, 16, True, (8, 32, 32)),  # fill: the cache ends holding block_size tokens
        (32, 8, 30, False, (8, 24, 8)),  # a long prompt shrinks to fit the block
    ],
)
def test_decode_plan_fits_the_block(block: int, new: int, prompt: int, fill: bool, expected: tuple) -> None:
    from types import SimpleNamespace

    from gqa_sweep.run.measure import decode_plan

    cfg = SimpleNamespace(data={"block_size": block}, metrics={
        "decode_batch": 8, "decode_new_tokens": new, "decode_prompt_tokens": prompt, "decode_fill_cache": fill})
    assert decode_plan(cfg) == expected
    assert sum(decode_plan(cfg)[1:]) <= block

"""The per-run decode measurement: what it times, and the row columns that say what it measured."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gqa_sweep.model.shape import ModelConfig, non_embedding_params
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
    assert set(runs.decode_mode) == {"eager"}  # auto on the CPU
    for _, r in runs.iterrows():  # the cache's bytes at the last step over the matmul weights'
        cfg = ModelConfig(vocab_size=int(r.vocab_size), block_size=32, n_layers=int(r.n_layers), d_model=int(r.d_model),
                          n_heads=int(r.n_heads), n_kv_heads=int(r.n_kv_heads), d_ff=int(r.d_ff))  # fmt: skip
        ratio = cfg.kv_bytes_per_token(1) * 12 * 2 / non_embedding_params(cfg)
        assert r.decode_cache_over_weights == pytest.approx(ratio, rel=1e-9) and 0 < ratio < 1
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
        ("metrics.decode_mode=fast", "metrics.decode_mode=fast must be one of auto, eager, graph"),
        ("metrics.decode_mode=graph", "metrics.decode_mode=graph captures a CUDA graph, but trainer.accelerator=cpu"),
        ("metrics.decode_cache_bound=maybe", "metrics.decode_cache_bound=maybe must be auto (on CUDA), true or false"),
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


def test_cache_bound_batch_is_where_the_mha_cache_outweighs_the_weights() -> None:
    from gqa_sweep.model.shape import non_embedding_params
    from gqa_sweep.train.metrics import CACHE_OVER_WEIGHTS, cache_bound_batch

    cfg = ModelConfig(vocab_size=50304, block_size=1024, n_layers=12, d_model=768, n_heads=12, n_kv_heads=1)
    mha = ModelConfig(**{**cfg.to_dict(), "n_kv_heads": 12})
    per_seq, weights = mha.kv_bytes_per_token(2) * 1024, non_embedding_params(mha) * 2  # 36 MiB a sequence
    B = cache_bound_batch(cfg, floor=8, elem=2, free_bytes=1e12)
    assert B == 32 and B * per_seq >= CACHE_OVER_WEIGHTS * weights > B // 2 * per_seq  # gpt2-124m: 32 sequences
    assert all(cache_bound_batch(ModelConfig(**{**cfg.to_dict(), "n_kv_heads": G}), 8, 2, 1e12) == 32
               for G in (2, 3, 4, 6, 12))  # the same batch for every G of a sweep  # fmt: skip
    assert cache_bound_batch(cfg, floor=8, elem=2, free_bytes=40 * per_seq) == 16  # halved to half the free memory
    assert cache_bound_batch(cfg, floor=8, elem=2, free_bytes=0) == 8  # never below metrics.decode_batch
    mla = ModelConfig(**{**cfg.to_dict(), "attention": "mla", "n_kv_heads": 12})
    assert cache_bound_batch(mla, floor=8, elem=2, free_bytes=1e12) == 32  # twin: the same shape's MHA


def test_decode_plan_fills_the_cache_at_the_cache_bound_batch() -> None:
    from omegaconf import OmegaConf

    from gqa_sweep.run.measure import decode_plan

    cfg = OmegaConf.create({"data": {"block_size": 128}, "metrics": {
        "decode_batch": 8, "decode_new_tokens": 64, "decode_prompt_tokens": 16, "decode_fill_cache": False}})
    assert decode_plan(cfg, lambda floor: 4 * floor) == (32, 64, 64)  # full cache, the rule's batch


def test_graph_mode_off_cuda_is_refused_and_eager_is_the_cpu_path(one_thread) -> None:
    model = DecoderLM(ModelConfig(vocab_size=64, block_size=24, n_layers=1, d_model=32, n_heads=4, n_kv_heads=2))
    with pytest.raises(ValueError, match="use eager"):
        decode_tokens_per_s(model, torch.randint(64, (2, 8)), 4, repeats=1, mode="graph")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_graph_decode_tokens_per_s_on_cuda() -> None:
    model = DecoderLM(ModelConfig(vocab_size=64, block_size=64, n_layers=2, d_model=64, n_heads=4, n_kv_heads=1))
    model = model.to("cuda", torch.bfloat16)
    prompt = torch.randint(64, (4, 32), device="cuda")
    assert 0 < decode_tokens_per_s(model, prompt, 16, repeats=2, mode="graph") < math.inf


def test_cache_bound_is_on_for_cuda_or_when_forced() -> None:
    from omegaconf import OmegaConf

    from gqa_sweep.train.metrics import cache_bound

    cfg = ModelConfig(vocab_size=65, block_size=32, n_layers=1, d_model=32, n_heads=8, n_kv_heads=2)
    m = lambda v: OmegaConf.create({"decode_cache_bound": v})  # noqa: E731
    assert cache_bound(m("auto"), cfg, torch.device("cpu"), 4) is None
    assert cache_bound(m(False), cfg, torch.device("cuda"), 2) is None
    rule = cache_bound(m(True), cfg, torch.device("cpu"), 4)
    assert rule(2) == 32  # the tiny sweep's shape: MHA's cache of 32 tokens x 32 sequences is >= 4x its weights

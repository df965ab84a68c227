"""The ladder sized from the command line or a preset: its preview's numbers, the corpus check and the commands
(they compose to each size's model)."""

from __future__ import annotations

import math

import pytest

from gqa_sweep.model.shape import ModelConfig, train_flops_per_token
from gqa_sweep.scaling import ladder, ladder_plan
from tests.conftest import ROOT


def test_the_cpu_preset_is_the_shipped_ladder() -> None:
    for s, shipped in zip(ladder_plan.plan(ladder_plan.PRESETS["cpu"]), ladder.sizes(), strict=True):
        assert (s.label, s.n_params, s.steps, s.warmup_steps) == (shipped.label, shipped.n_params, shipped.max_steps,
                                                                  shipped.warmup_steps)  # fmt: skip


def test_the_gpu_preset_spans_10m_to_300m_at_d_head_64() -> None:
    shape = ladder_plan.PRESETS["gpu"]
    sizes = ladder_plan.plan(shape)
    assert shape.d_head == 64 and 10e6 <= sizes[0].n_params < 12e6 and 250e6 <= sizes[-1].n_params <= 300e6
    g6 = sizes[-1]
    cfg = ModelConfig(vocab_size=8192, block_size=1024, n_layers=16, d_model=1280, n_heads=8, n_kv_heads=8, d_head=64)
    assert g6.tokens == math.ceil(20 * g6.n_params / 32768) * 32768
    assert g6.flops == pytest.approx(g6.tokens * train_flops_per_token(cfg, 1024))


def test_preview_and_a_too_small_corpus(capsys) -> None:
    assert ladder_plan.main(["--preset", "gpu", "--flops-per-s", "4e14", "--corpus-tokens", "1e9"]) == 2
    out, err = capsys.readouterr()
    assert "| g6 | 16 | 1280 | 262,841,600 | 5,256,839,168 | 160,426 | 8.82e+18 | 6.12 h |" in out
    assert "the corpus has 1,000,000,000 train tokens but size g6 (N = 262,841,600) trains on 5,256,839,168" in err
    assert ladder_plan.main(["--sizes", "1x32,2x64", "--tokens-per-param", "10", "--corpus-tokens", "1e7"]) == 0
    out = capsys.readouterr().out
    assert "| s2 | 2 | 64 |" in out and "est. time: give --flops-per-s or --results DIR" in out
    assert ladder_plan.main(["--sizes", "4-384"]) == 2
    assert "each size is n_layers x d_model" in capsys.readouterr().err


def test_each_command_composes_to_its_size() -> None:
    from hydra import compose, initialize_config_dir

    shape = ladder_plan.PRESETS["gpu"]
    s = ladder_plan.plan(shape)[2]
    overrides = ladder_plan.command(shape, s, "x.txt").split()[2:]  # after `gqa-sweep -m`
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[o for o in overrides if not o.startswith("seed")])
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.d_head, cfg.model.name) == (8, 640, 64, "ladder-g3")
    assert (cfg.trainer.max_steps, cfg.optim.warmup_steps, cfg.data.block_size) == (s.steps, s.warmup_steps, 1024)
    assert cfg.optim.lr == ladder_plan.sp_lr(s.n_params)

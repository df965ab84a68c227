"""experiment=ladder: the conf/ladder yaml files are what gqa_sweep/scaling/ladder.py's rule writes, and the
rule meets the issue's terms (>= 5 sizes over >= 10x in N, 20 tokens per parameter, data repeated <= 4x)."""

import math

import pytest

from gqa_sweep.model.kv import divisors
from gqa_sweep.scaling import ladder, ladder_plan
from tests.conftest import ROOT


def test_conf_ladder_yaml_equals_the_rule():
    sizes = ladder.sizes()
    for s in sizes:
        assert (ROOT / "conf" / "ladder" / f"{s.label}.yaml").read_text() == ladder.size_yaml(s), (
            f"conf/ladder/{s.label}.yaml is stale: run `python -m gqa_sweep.scaling.ladder conf/ladder`")
    gpu = sorted(ladder_plan.size_files("gpu"))  # the GPU preset's sizes (tests/test_preview.py)
    assert sorted(p.stem for p in (ROOT / "conf" / "ladder").glob("*.yaml")) == gpu + [s.label for s in sizes]


def test_ladder_meets_the_issue():
    sizes = ladder.sizes()
    assert len(sizes) >= 5
    ns = [s.n_params for s in sizes]
    assert ns == sorted(ns) and ns[-1] / ns[0] >= 10
    assert [s.n_layers for s in sizes] == sorted(s.n_layers for s in sizes)  # depth and width grow together
    assert [s.d_model for s in sizes] == sorted(s.d_model for s in sizes)
    for s in sizes:
        assert 20 <= s.tokens / s.n_params < 20 + ladder.BATCH * ladder.BLOCK / s.n_params
        assert s.warmup_steps * ladder.BATCH * ladder.BLOCK >= s.n_params  # warm-up of N tokens
        assert s.epochs <= 4
    assert [ladder.SEEDS[s.label] for s in sizes] == sorted((ladder.SEEDS[s.label] for s in sizes), reverse=True)


def test_best_lr_is_the_parabola_vertex_in_log_lr():
    # symmetric losses about 1e-2 on a log-symmetric grid: the vertex is 1e-2; on log lr = -1, 0, 1 (steps h)
    # losses 3, 2, 2.5 put the vertex h * (3 - 2.5) / (2 * (3 - 4 + 2.5)) = h / 6 past the middle
    assert ladder.best_lr({1e-3: 4.0, 1e-2: 3.0, 1e-1: 4.0}) == (pytest.approx(1e-2), False)
    assert ladder.best_lr({1e-3: 3.0, 1e-2: 2.0, 1e-1: 2.5})[0] == pytest.approx(1e-2 * math.exp(math.log(10) / 6))
    assert ladder.best_lr({1e-3: 3.0, 1e-2: 2.5, 1e-1: 2.0}) == (1e-1, True)  # minimum at the edge: flagged


def test_lr_rule_is_the_least_squares_power_law_of_the_grid():
    lr_ref, n_ref, exponent = ladder.lr_rule()
    pts = [(ladder.mha_params(*ladder.LR_GRID_SHAPES[size]), ladder.best_lr(loss)[0])
           for (size, _), loss in ladder.LR_GRID_LOSS.items()]
    # the least-squares line passes through the centroid of (log N, log lr)
    assert math.log(n_ref) == pytest.approx(sum(math.log(n) for n, _ in pts) / len(pts))
    assert math.log(lr_ref) == pytest.approx(sum(math.log(lr) for _, lr in pts) / len(pts))
    for s in ladder.sizes():
        assert s.lr == float(f"{lr_ref * (s.n_params / n_ref) ** -exponent:.3g}")


def test_experiment_composes_every_size_and_every_g():
    from hydra import compose, initialize_config_dir

    from gqa_sweep.config import model_shape
    from gqa_sweep.spec import resolved

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        for s in ladder.sizes():
            cfg = compose("config", overrides=["experiment=ladder", f"ladder={s.label}", "data.path=x.txt"])
            model = model_shape(resolved(cfg))
            assert (model.n_layers, model.d_model, model.d_head, cfg.model.name) == (
                s.n_layers, s.d_model, ladder.D_HEAD, f"ladder-{s.label}")
            assert (cfg.trainer.max_steps, cfg.optim.lr, cfg.optim.warmup_steps) == (s.max_steps, s.lr,
                                                                                     s.warmup_steps)
            assert (cfg.data.batch_size, cfg.data.block_size, cfg.data.vocab_size) == (ladder.BATCH, ladder.BLOCK,
                                                                                      ladder.VOCAB)
        sweep = compose("config", overrides=["experiment=ladder"], return_hydra_config=True).hydra.sweeper.params
    assert sweep["model.n_kv_heads"] == "all" and divisors(ladder.N_HEADS) == [1, 2, 4]
    assert sweep["ladder"] == ",".join(s.label for s in ladder.sizes())


def test_commands_run_the_extra_seeds_only_where_cheap():
    cmds = ladder.commands("/data/ladder.txt")
    assert cmds[0].endswith("ladder=s1,s2,s3,s4,s5 seed=0")
    assert cmds[1:] == [f"gqa-sweep -m experiment=ladder data.path=/data/ladder.txt {x}"
                        for x in ("ladder=s1,s2,s3,s4 seed=1", "ladder=s1,s2 seed=2", "ladder=s5 seed=1")]

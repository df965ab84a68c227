"""optim.lr=transfer: a muP ladder size takes its G's best lr from the grid stored at the base width."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from gqa_sweep.config import ConfigError
from gqa_sweep.plan import spec_of
from gqa_sweep.scaling.ladder import best_lr
from gqa_sweep.store.results import ResultsStore

ROOT = Path(__file__).resolve().parents[1]
GRID = (2.5e-3, 5e-3, 1e-2, 2e-2, 4e-2)
SP = ("model.parametrization=sp", "model.mup_base_width=null", "model.mup_base_d_head=null")


def _spec(store: Path, corpus: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=["experiment=ladder_mup", f"data.path={corpus}", f"results_dir={store}",
                                           *overrides])  # fmt: skip
        return spec_of(cfg)


def _loss(lr: float, best: float) -> float:
    return 3.0 + 0.1 * math.log(lr / best) ** 2


@pytest.fixture()
def corpus(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text("The quick brown fox jumps over the lazy dog.\n" * 400)
    return p


def _store_grid(store: Path, corpus: Path, G: int, best: float, lrs=GRID, seeds=(0,), extra=()) -> None:
    """Grid rows as the sweep would write them: the s1 job's own spec at each lr."""
    for lr in lrs:
        for seed in seeds:
            s = _spec(store, corpus, "ladder=s1", "sweep=ladder_lr", f"model.n_kv_heads={G}", f"optim.lr={lr}",
                      f"seed={seed}", *extra)  # fmt: skip
            loss = _loss(lr, best) + 0.001 * seed
            config = s.config
            config["data"].pop("allow_repeats", None)  # a row stored before a key outside the identity existed
            ResultsStore(store).write_run({
                "run_id": s.run_id, "run_name": s.name, "sweep": "ladder_lr", "status": "completed",
                "n_heads": 4, "n_kv_heads": G, "n_layers": s.model.n_layers, "d_model": s.model.d_model,
                "seed": seed, "lr": lr, "val_loss": loss, "val_ppl": math.exp(loss), "vocab_size": 512,
                "parametrization": s.model.parametrization, "config": config,
            })  # fmt: skip


def test_sp_cannot_transfer(tmp_path, corpus) -> None:
    with pytest.raises(ConfigError, match=r"optim.lr=transfer .* needs model.parametrization=mup"):
        _spec(tmp_path / "r", corpus, *SP)


def test_no_grid_says_what_to_run(tmp_path, corpus) -> None:
    with pytest.raises(ConfigError, match=r"no run of the 'ladder_lr' grid at d_model 20, G = 2, .* "
                                          r"optim.lr=2.5e-3,.* and sweep=ladder_lr"):  # fmt: skip
        _spec(tmp_path / "r", corpus, "ladder=s3", "model.n_kv_heads=2")


def test_each_G_takes_its_own_grid_vertex_at_every_size(tmp_path, corpus) -> None:
    store = tmp_path / "r"
    _store_grid(store, corpus, G=1, best=0.015, seeds=(0, 1))
    _store_grid(store, corpus, G=4, best=0.007)
    _store_grid(store, corpus, G=1, best=0.0031, extra=SP)  # another computation
    want = {G: float(f"{best_lr({lr: _loss(lr, b) for lr in GRID})[0]:.3g}") for G, b in ((1, 0.015), (4, 0.007))}
    assert want[1] == pytest.approx(0.015, rel=0.01) and want[4] == pytest.approx(0.007, rel=0.01)
    for size in ("s1", "s3", "s5"):
        for G in (1, 4):
            s = _spec(store, corpus, f"ladder={size}", f"model.n_kv_heads={G}")
            assert s.optim["lr"] == want[G]
            assert f"transferred from the 'ladder_lr' grid at d_model 20, G = {G}" in s.lr_note
    # The transferred lr is a number in the id: the same run as one given that lr by hand.
    by_hand = _spec(store, corpus, "ladder=s5", "model.n_kv_heads=4", f"optim.lr={want[4]}")
    assert _spec(store, corpus, "ladder=s5", "model.n_kv_heads=4").run_id == by_hand.run_id
    assert "2 seed(s)" in _spec(store, corpus, "ladder=s2", "model.n_kv_heads=1").lr_note


def test_a_grid_too_small_or_with_its_best_at_an_edge_is_refused(tmp_path, corpus) -> None:
    store = tmp_path / "r"
    _store_grid(store, corpus, G=1, best=0.01, lrs=(5e-3, 1e-2))
    with pytest.raises(ConfigError, match=r"has 2 lr\(s\) \(0.005, 0.01\); it needs at least 3"):
        _spec(store, corpus, "ladder=s2", "model.n_kv_heads=1")
    _store_grid(store, corpus, G=4, best=0.2)
    with pytest.raises(ConfigError, match=r"the best lr of .* is its highest, 0.04 .* add lrs beyond it"):
        _spec(store, corpus, "ladder=s2", "model.n_kv_heads=4")

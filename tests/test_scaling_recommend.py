"""gqa-recommend's two questions on hand-made curves, and end to end on a synthetic ladder store."""

from fractions import Fraction

import numpy as np
import pytest

from gqa_sweep.model.kv import kv_cache_bytes
from gqa_sweep.scaling import deploy

# Two trained KV fractions with the same E and alpha; G = H/4 needs 1.25x MHA's parameters for the same loss
# (A_{1/4} = 50 * 1.25^0.3). Row 0 is the point estimate, rows 1-3 identical "draws" (P(best) is then 1).
E, ALPHA, A_MHA = 1.5, 0.3, 50.0
A_QUARTER = A_MHA * 1.25**ALPHA
CURVES = deploy.Curves(
    E={Fraction(1): np.full(4, E), Fraction(1, 4): np.full(4, E)},
    A={Fraction(1): np.full(4, A_MHA), Fraction(1, 4): np.full(4, A_QUARTER)},
    alpha={Fraction(1): np.full(4, ALPHA), Fraction(1, 4): np.full(4, ALPHA)},
)
TARGET = E + A_MHA * 1e9**-ALPHA  # MHA reaches it at N = 1e9 exactly, G = H/4 at N = 1.25e9


def test_longer_context_pushes_the_optimum_to_fewer_kv_heads():
    # Cost-Optimal GQA, Table 4's direction. Llama-7B attention: L = 32, H = 32, d_head 128.
    #   C = 2N + 4*T*32*128*32 = 2N + 524,288 T;  M = N + 2*T*32*128*G = N + 8,192 G T
    # T = 128:    MHA   M = 1e9 + 33.55e6 = 1.0336e9, Z = 0.9*32,150 + 0.1*(2.067e9)^(1/3) = 28,935 + 127.4
    #             G=8   M = 1.25e9 + 8.39e6 = 1.2584e9, Z = 0.9*35,474 + 0.1*(2.567e9)^(1/3) = 31,927 + 136.9
    # T = 32,768: MHA   M = 1e9 + 8.590e9 = 9.590e9, Z = 0.9*97,928 + 0.1*(1.918e10)^(1/3) = 88,135 + 267.7
    #             G=8   M = 1.25e9 + 2.147e9 = 3.397e9, Z = 0.9*58,286 + 0.1*(1.968e10)^(1/3) = 52,457 + 270.0
    short = deploy.cheapest_at_loss(CURVES, TARGET, 128, shape=(32, 32))
    long = deploy.cheapest_at_loss(CURVES, TARGET, 32768, shape=(32, 32))
    z = {(T, row["G/H"]): row["Z"] for T, a in ((128, short), (32768, long)) for row in a.table}
    assert z[(128, "1")] == pytest.approx(28935 + 127.4, rel=1e-3)
    assert z[(128, "1/4")] == pytest.approx(31927 + 136.9, rel=1e-3)
    assert z[(32768, "1")] == pytest.approx(88135 + 267.7, rel=1e-3)
    assert z[(32768, "1/4")] == pytest.approx(52457 + 270.0, rel=1e-3)
    assert short.G == 32 and long.G == 8  # MHA at T = 128; G = H/4 at T = 32K
    assert short.p_best == 1.0 and long.p_best == 1.0
    ratio = {row["G/H"]: row["vs_H/4"] for row in long.table}
    assert ratio["1"] == pytest.approx((88135 + 267.7) / (52457 + 270.0), rel=1e-3)


def test_target_at_or_below_E_is_refused():
    with pytest.raises(ValueError, match="at or below E for every trained G/H"):
        deploy.cheapest_at_loss(CURVES, E, 4096, shape=(32, 32))


def test_untrained_ratio_is_flagged():
    assert deploy.check_ratio(CURVES, 8, 32) is None
    assert "G=1 of H=32 (G/H = 1/32) was not trained (trained G/H: 1/4, 1)" in deploy.check_ratio(CURVES, 1, 32)


def test_budget_picks_the_g_whose_larger_model_fits():
    # Llama-like family (d 128 k, H = L = k). At T = 2,048, batch 1, 16 GB: KV is small, both G/H fit the same
    # k and MHA's curve is lower -> MHA. At T = 32,768, batch 64 the MHA cache alone of member k is
    # 2 * k * 128 * k * 32768 * 64 * 2 B = 2.15e9 k^2 B: k <= 2 fits, G = H/4 fits k up to 5 -> G = H/4.
    short = deploy.best_under_budget(CURVES, 16 * 10**9, 2048, 1)
    assert (short.G, short.H) == (short.H, short.H)
    long = deploy.best_under_budget(CURVES, 16 * 10**9, 32768, 64)
    assert Fraction(long.G, long.H) == Fraction(1, 4)
    rows = {row["G/H"]: row for row in long.table}
    assert rows["1"]["n_layers"] < rows["1/4"]["n_layers"]
    assert kv_cache_bytes(2, 128, 2, 32768, 64, 2) == 2 * 2 * 128 * 2 * 32768 * 64 * 2
    for row in long.table:
        assert row["memory_bytes"] <= 16 * 10**9


def test_cli_answers_both_questions_from_a_store(tmp_path, capsys):
    from gqa_sweep.scaling.recommend import main
    from gqa_sweep.store.results import ResultsStore

    rng = np.random.default_rng(0)
    store = ResultsStore(tmp_path)
    sizes = np.logspace(4.4, 5.4, 5)
    i = 0
    for k, N in enumerate(sizes):
        for G, s in ((4, 1.0), (2, 0.85), (1, 0.7)):
            for seed in range(2):
                loss = (3.0 + 40 * (s * N) ** -0.3) * np.exp(0.003 * rng.standard_normal())
                store.write_run({"run_id": f"r{i}", "sweep": "ladder", "status": "completed", "n_heads": 4,
                                 "n_kv_heads": G, "n_params_non_embedding": int(N * (0.9 + 0.05 * G / 2)),
                                 "val_loss": loss, "seed": seed, "model_name": f"ladder-s{k + 1}"})
                i += 1
    rc = main([str(tmp_path), "--context", "8192", "--batch", "8", "--memory", "24GB", "--loss", "3.2",
               "--draws", "200", "--model", "M0"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "(a) lowest predicted loss within 24GB" in out and "P(best)" in out
    assert "(b) lowest Cost-Optimal Z" in out and "Z / Z(G=H/4)" in out
    rc = main([str(tmp_path), "--context", "8192", "--loss", "2.0", "--draws", "50", "--model", "M0"])
    assert rc == 2
    assert "at or below E for every trained G/H" in capsys.readouterr().err

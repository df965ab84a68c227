"""The scaling-law fitter on known laws (issue 23, "Done when"): synthetic recovery, interval coverage, and
Epoch AI's published Chinchilla fit through the same code."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gqa_sweep.scaling.bootstrap import bootstrap
from gqa_sweep.scaling.fit import fit
from gqa_sweep.scaling.laws import group_law, nd_law
from gqa_sweep.scaling.models import fit_model
from gqa_sweep.scaling.points import synthetic

# L = 1.5 + 50 N^-0.3 at 5 sizes log-spaced over 30x from N = 1e5
E, A, ALPHA = 1.5, 50.0, 0.3
SIZES = np.logspace(5, np.log10(3e6), 5)
# Epoch AI's points from the Chinchilla paper's Fig. 4, in the repository with their source (tests/data/chinchilla)
CHINCHILLA = Path(__file__).resolve().parent / "data" / "chinchilla" / "svg_extracted_data.csv"


def test_law_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    logn = np.log(np.repeat(SIZES, 3))
    g = np.tile([1, 2, 4], 5)
    law = group_law(logn, g, "M3")
    theta = rng.normal(size=(1, law.n_params))
    y = rng.normal(size=len(logn))
    from gqa_sweep.scaling.fit import objective_fn

    for objective in ("wls", "huber"):
        f = objective_fn(law, y[None], np.ones((1, len(y))), objective, delta=0.5)
        v, grad = f(theta.ravel())
        eps = 1e-6
        num = [(f(theta.ravel() + eps * np.eye(law.n_params)[j])[0] - v) / eps for j in range(law.n_params)]
        np.testing.assert_allclose(grad, num, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("objective", ["wls", "huber"])
def test_recovers_alpha_and_E_at_0p2_percent_noise(objective):
    # issue: alpha within +-0.05 and E within +-0.1 in >= 90 of 100 seeds (measured here: 98 / 100 for both)
    ok = 0
    for s in range(100):
        p = synthetic(E, A, ALPHA, SIZES, 0.002, 1, np.random.default_rng(s))
        par = fit_model(p, "M0", objective).params()
        ok += abs(par["alpha[1]"][0] - ALPHA) <= 0.05 and abs(par["E[1]"][0] - E) <= 0.1
    assert ok >= 90


def test_bootstrap_intervals_cover_the_truth_at_1_percent_noise():
    # issue: nominal 95 % intervals of alpha and E cover the truth in 88-98 of 100 seeds. 3 seeds a size (the
    # seed sigma is measured, as on the ladder); 200 parametric draws a seed (not 1,000) keeps this test fast:
    # coverage at 1,000 draws was the same within 3 seeds (90 / 93 of 100).
    cov_alpha = cov_E = 0
    for s in range(100):
        p = synthetic(E, A, ALPHA, SIZES, 0.01, 3, np.random.default_rng(1000 + s))
        b = bootstrap(fit_model(p, "M0", "wls"), draws=200, seed=s)
        par = b.params()
        lo, hi = b.interval(par["alpha[1]"])
        cov_alpha += lo <= ALPHA <= hi
        lo, hi = b.interval(par["E[1]"])
        cov_E += lo <= E <= hi
    assert 88 <= cov_alpha <= 98
    assert 88 <= cov_E <= 98


def test_joint_fit_recovers_a_constant_parameter_multiplier():
    # M0: L_G = E + A (s_G N)^-alpha; s = 1 (MHA, G=4), 0.8, 0.5: the fit returns s_G
    rows = []
    rng = np.random.default_rng(3)
    for G, s_g in ((4, 1.0), (2, 0.8), (1, 0.5)):
        p = synthetic(E, A * s_g**-ALPHA, ALPHA, SIZES, 0.002, 2, rng, G=G, H=4)
        rows.append(p.df)
    p.df = pd.concat(rows, ignore_index=True)
    par = fit_model(p, "M0", "wls").params()
    assert par["s[4]"][0] == pytest.approx(1.0)
    assert par["s[2]"][0] == pytest.approx(0.8, abs=0.05)
    assert par["s[1]"][0] == pytest.approx(0.5, abs=0.05)


def test_fewer_than_three_sizes_is_refused():
    p = synthetic(E, A, ALPHA, SIZES[:2], 0.01, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match=">= 3 sizes"):
        fit_model(p, "M0")


def test_reproduces_epochs_chinchilla_fit():
    # Besiroglu et al. 2024: drop the 5 highest losses, D = FLOP / 6N, Huber (delta 1e-3) in log space from a
    # grid: E = 1.817, A = 478, alpha = 0.347, B = 2,144, beta = 0.367
    df = pd.read_csv(CHINCHILLA).sort_values("loss").iloc[:-5]
    N = df["Model Size"].to_numpy()
    D = df["Training FLOP"].to_numpy() / (6 * N)
    f = fit(nd_law(np.log(N), np.log(D)), np.log(df["loss"].to_numpy()), objective="huber")
    p = f.params()
    assert len(df) == 240
    assert p["E"] == pytest.approx(1.817, abs=0.01)
    assert p["alpha"] == pytest.approx(0.347, abs=0.01)
    assert p["beta"] == pytest.approx(0.367, abs=0.01)
    assert p["A"] == pytest.approx(478, rel=0.05)
    assert p["B"] == pytest.approx(2144, rel=0.05)


def test_seed_resampling_bootstrap_brackets_the_estimate():
    p = synthetic(E, A, ALPHA, SIZES, 0.01, 3, np.random.default_rng(7))
    mf = fit_model(p, "M0", "wls")
    b = bootstrap(mf, draws=200, scheme="seeds", seed=1)
    lo, hi = b.interval(b.params()["alpha[1]"])
    assert lo < mf.params()["alpha[1]"][0] < hi
    with pytest.raises(ValueError, match="choose one of parametric, seeds"):
        bootstrap(mf, draws=10, scheme="jackknife")

"""Scaling laws per G (issue 23), numpy/scipy only (no torch):

laws.py       log-space LSE forms (per-G E/A/alpha shared or not: M0-M3; Chinchilla's L(N, D))
fit.py        Huber / weighted least squares, grid of starts (vectorised LM), L-BFGS-B polish
points.py     runs table -> fit points (N, G, size, seed, loss) and the seed sigma
models.py     the joint fits across G and their parameters (E, A_G, alpha_G, s_G)
bootstrap.py  parametric / seed-resampling bootstrap refits -> intervals
holdout.py    held-out largest size, progressive check, no-fit baselines, model comparison
deploy.py     gqa-recommend's two questions (memory budget; Cost-Optimal cost at a target loss)
recommend.py  the gqa-recommend CLI
ladder.py     experiment=ladder's size rule (writes conf/ladder/*.yaml); corpus.py its shuffled corpus
"""

"""`gqa-recommend`: which G for a deployment, from the scaling fit of a ladder in a results store.

    gqa-recommend RESULTS_DIR --context 8192 --batch 16 --memory 80GB                 (a) best loss that fits
    gqa-recommend RESULTS_DIR --context 8192 --loss 2.1                               (b) cheapest G at loss L*
    ... [--weight-dtype bf16] [--kv-dtype bf16] [--vocab 32000] [--layers L --d-model D --heads H] [--draws 1000]

(a) and (b) are explained in deploy.py. The fit is the held-out winner of M0-M3 (gqa-report --scaling) unless
--model is given; every answer carries a 95 % bootstrap interval and P(best): the share of bootstrap draws in
which the chosen G is the best. Torch-free: it reads the store and fits in a few seconds.
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction

import numpy as np

from gqa_sweep.model.kv import DTYPE_BYTES, human_bytes, parse_bytes
from gqa_sweep.scaling import deploy
from gqa_sweep.scaling.bootstrap import bootstrap
from gqa_sweep.scaling.laws import MODELS, per_group
from gqa_sweep.scaling.models import fit_model
from gqa_sweep.scaling.points import from_runs


def curves_from_fit(mf, boot) -> deploy.Curves:
    """Curves keyed by G/H from a ModelFit and its Bootstrap (row 0: the point estimate)."""
    df = mf.points.df
    thetas = np.vstack([mf.theta[None, :], boot.thetas])
    E, A, alpha = {}, {}, {}
    for k in mf.points.keys:
        H = int(df.loc[df["key"] == k, "H"].iloc[0])
        G = int(df.loc[df["key"] == k, "G"].iloc[0])
        r = Fraction(G, H)
        E[r] = np.exp(per_group(mf.law, thetas, "e", k))
        A[r] = np.exp(per_group(mf.law, thetas, "a", k))
        alpha[r] = per_group(mf.law, thetas, "alpha", k)
    return deploy.Curves(E, A, alpha)


def load_curves(results_dir: str, sweep: str | None, model: str, objective: str, draws: int):
    from gqa_sweep.scaling.holdout import compare_models
    from gqa_sweep.store.results import load_runs

    runs = load_runs(results_dir)
    if sweep is None and "ladder" in set(runs["sweep"].dropna().astype(str)):
        sweep = "ladder"
    if sweep is not None:
        runs = runs[runs["sweep"] == sweep]
    points = from_runs(runs)
    if model == "auto":
        table = compare_models(points, objectives=(objective,))
        model = str(table.loc[table["winner"], "model"].iloc[0])
    mf = fit_model(points, model, objective)
    return curves_from_fit(mf, bootstrap(mf, draws)), mf


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gqa-recommend", description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir", help="a results store holding an experiment=ladder sweep")
    p.add_argument("--sweep", help="the ladder's sweep name (default: ladder when present)")
    p.add_argument("--context", type=int, required=True, help="context length T in tokens")
    p.add_argument("--batch", type=int, default=1, help="sequences served at once (for --memory)")
    p.add_argument("--memory", help="(a) memory budget for weights + KV cache, e.g. 80GB, 24GiB")
    p.add_argument("--loss", type=float, help="(b) target loss L* (in the ladder's units: its val loss)")
    p.add_argument("--weight-dtype", default="bf16", choices=list(DTYPE_BYTES))
    p.add_argument("--kv-dtype", default="bf16", choices=list(DTYPE_BYTES))
    p.add_argument("--vocab", type=int, default=32000, help="target vocabulary (its LM head is part of N)")
    p.add_argument("--layers", type=int, help="explicit shape instead of the Llama-like family: n_layers")
    p.add_argument("--d-model", type=int, help="explicit shape: d_model (with --layers and --heads)")
    p.add_argument("--heads", type=int, help="explicit shape: query heads H")
    p.add_argument("--head-dim", type=int, default=128, help="explicit shape: d_head (default 128)")
    p.add_argument("--kv-heads", type=int, help="also check this G: refused if its G/H was not trained")
    p.add_argument("--model", default="auto", choices=["auto", *MODELS], help="scaling model (auto: held-out winner)")
    p.add_argument("--objective", default="wls", choices=["wls", "huber"])
    p.add_argument("--draws", type=int, default=1000, help="bootstrap refits (default 1000)")
    return p


def _n(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def _fmt_ratio(r: str) -> str:
    return f"G/H={r}"


def answer_budget(curves, args, answers: list) -> list[str]:
    shape = (args.layers, args.d_model, args.heads) if args.layers else None
    ans = deploy.best_under_budget(curves, parse_bytes(args.memory), args.context, args.batch, args.weight_dtype,
                                   args.kv_dtype, args.vocab, shape=shape, d_head=args.head_dim)
    answers.append(ans)
    head = (f"(a) lowest predicted loss within {args.memory} (weights {args.weight_dtype} + KV {args.kv_dtype} at "
            f"T={args.context:,}, batch {args.batch}):")
    out = [head]
    for row in ans.table:
        out.append(f"    {_fmt_ratio(row['G/H'])}: G={row['G']} of H={row['H']}, L={row['n_layers']}, "
                   f"d={row['d_model']}, N={row['N'] / 1e9:.3g}B, {human_bytes(row['memory_bytes'])}: "
                   f"loss {row['loss']:.4f} "
                   f"[{row['loss_lo']:.4f}, {row['loss_hi']:.4f}]")
    out.append(f"  -> G={ans.G} of H={ans.H} (N={_n(ans.n_params)}): loss {ans.loss:.4f} "
               f"[{ans.interval[0]:.4f}, {ans.interval[1]:.4f}], P(best) = {ans.p_best:.2f}"
               + (" (the only trained G/H that fits)" if len(ans.table) == 1 else ""))
    return out


def answer_loss(curves, args, answers: list) -> list[str]:
    shape = (args.layers, args.heads) if args.layers else None
    ans = deploy.cheapest_at_loss(curves, args.loss, args.context, args.vocab, shape=shape, d_head=args.head_dim)
    answers.append(ans)
    out = [f"(b) lowest Cost-Optimal Z = 0.9 M^1/2 + 0.1 C^1/3 at loss {args.loss:g}, T={args.context:,}:"]
    out += [f"    flag: {f}" for f in ans.flags]
    for row in ans.table:
        vs = (f", Z / Z(G=H/4) = {row['vs_H/4']:.3f} [{row['vs_H/4_lo']:.3f}, {row['vs_H/4_hi']:.3f}]"
              if "vs_H/4" in row else "")
        where = f"L={row['n_layers']:.0f}, H={row['H']:.0f}" if shape else f"family: H=L={row['H']:.1f}"
        out.append(f"    {_fmt_ratio(row['G/H'])}: N={_n(row['N'])} ({where}), Z={row['Z']:.1f} "
                   f"[{row['Z_lo']:.1f}, {row['Z_hi']:.1f}]{vs}")
    best = min(ans.table, key=lambda row: row["Z"])
    out.append(f"  -> {_fmt_ratio(best['G/H'])}: Z={ans.loss:.1f} [{ans.interval[0]:.1f}, {ans.interval[1]:.1f}], "
               f"P(best) = {ans.p_best:.2f}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.memory is None and args.loss is None:
        print("gqa-recommend: error: ask (a) with --memory BUDGET and/or (b) with --loss TARGET", file=sys.stderr)
        return 2
    if bool(args.layers) != bool(args.heads) or (args.memory and args.layers and not args.d_model):
        print("gqa-recommend: error: an explicit shape needs --layers and --heads (and --d-model with --memory)",
              file=sys.stderr)
        return 2
    try:
        curves, mf = load_curves(args.results_dir, args.sweep, args.model, args.objective, args.draws)
        print(f"fit: {mf.model}/{mf.objective} on {len(mf.points.df)} runs, {len(mf.points.sizes)} sizes "
              f"(N {mf.points.df['N'].min():,.0f}-{mf.points.df['N'].max():,.0f}); {args.draws} bootstrap draws")
        if args.kv_heads is not None:
            why = deploy.check_ratio(curves, args.kv_heads, args.heads or 32)
            if why:
                raise ValueError(why)
        lines, answers = [], []
        if args.memory:
            lines += answer_budget(curves, args, answers)
        if args.loss is not None:
            lines += answer_loss(curves, args, answers)
    except ValueError as e:
        print(f"gqa-recommend: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    n_max = mf.points.df["N"].max()
    k = max(row["N"] for a in answers for row in a.table) / n_max
    if k > 1:
        print(f"note: up to {k:,.1f}x beyond the largest trained N ({n_max:,.0f}): an extrapolation of the fit"
              + (", past the 10x that gqa-report --scaling flags as unreliable" if k > 10 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

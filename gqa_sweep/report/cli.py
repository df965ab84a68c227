"""`gqa-report`: print the Markdown tables, write table files and plots.

    gqa-report RESULTS_DIR [--sweep NAME] [--format md|latex|csv|all] [--out DIR] [--plots]
    gqa-report --wandb ENTITY/PROJECT [...]
    gqa-report RESULTS_DIR --scaling [--sweep ladder] [--draws 1000] [--plots]   scaling laws per G (ladder)
    gqa-report RESULTS_DIR --transfer [--sweep mup_transfer] [--plots]   lr transfer across width, sp vs mup
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gqa_sweep.report.groups import split
from gqa_sweep.report.load import (
    FORMATS,
    ReportError,
    load_results,
    load_wandb,
    select_sweep,
)
from gqa_sweep.report.plots import make_plots, write_plots
from gqa_sweep.report.tables import build_tables, to_markdown, write_tables
from gqa_sweep.store.results import load_history

# ------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gqa-report",
        description="Paper-style ablation tables (Markdown, LaTeX, CSV) and plots from a gqa-sweep results store. "
                    "Runs that differ in more than seed and the compared axes (G, lr, ...), e.g. in their data or "
                    "tokenizer, are never averaged: each such group is reported apart, under OUT/<group>/.",
    )
    p.add_argument("results_dir", nargs="?", help="the results_dir the sweep wrote (holds runs.sqlite)")
    p.add_argument("--sweep", help="only this sweep's runs (default: every run in the store)")
    p.add_argument("--format", choices=[*FORMATS, "all"], default="all", help="table files to write (default: all)")
    p.add_argument("--out", type=Path, help="output directory (default: RESULTS_DIR/report)")
    p.add_argument("--plots", action="store_true", help="also write PNG + SVG plots")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from a wandb project instead")
    p.add_argument("--scaling", action="store_true",
                   help="scaling laws per G from a size ladder (experiment=ladder; default --sweep ladder): fit, "
                        "held-out largest size, extrapolation to 100M/1B/7B")
    p.add_argument("--transfer", action="store_true",
                   help="best lr per (width, G) and its drift across width, sp vs mup (experiment=mup_transfer)")
    p.add_argument("--draws", type=int, default=1000, help="bootstrap refits for --scaling intervals (default 1000)")
    return p


def _scaling_report(runs, out: Path, formats, plots: bool, draws: int, fitted: dict | None = None) -> list[Path]:
    """Fit, check and plot one ladder; its tables also go to `fitted` (for scaling_compare)."""
    from gqa_sweep.report.scaling import scaling_tables, verdict

    if draws < 1:
        raise ReportError(f"--draws {draws}: give a positive number of bootstrap refits, e.g. --draws 1000")
    try:
        tables = scaling_tables(runs, draws)
    except ValueError as e:
        raise ReportError(str(e)) from None
    if fitted is not None:
        fitted[out.name] = tables
    print("\n".join(to_markdown(name, t) for name, t in tables.items()))
    print(verdict(tables))
    written = write_tables(tables, out, formats)
    (out / "scaling_verdict.md").write_text(verdict(tables) + "\n")
    written.append(out / "scaling_verdict.md")
    if plots:
        from gqa_sweep.report.scaling_plots import scaling_plots
        from gqa_sweep.scaling.points import from_runs

        fit = tables["scaling_fit"].iloc[0]
        written += write_plots(scaling_plots(from_runs(runs), fit["model"], fit["objective"], draws), out)
    return written


def _report(args: argparse.Namespace) -> list[Path]:
    if args.wandb:
        all_runs, where = load_wandb(args.wandb), f"wandb project {args.wandb}"
    else:
        all_runs, where = load_results(args.results_dir), f"{args.results_dir.rstrip('/')}/"
    if args.scaling and args.sweep is None and "ladder" in set(all_runs.sweep.dropna().astype(str)):
        args.sweep = "ladder"  # the lr grid (sweep ladder_lr) shares the store but is not part of the ladder
    runs = select_sweep(all_runs, args.sweep, where)
    sweeps = sorted(runs.sweep.dropna().astype(str).unique())
    if len(sweeps) > 1:
        print(f"gqa-report: note: pooling {len(sweeps)} sweeps ({', '.join(sweeps)}); pick one with --sweep NAME",
              file=sys.stderr)
    out = args.out or (Path(args.results_dir) / "report" if args.results_dir else Path("report"))
    if args.transfer:  # compares parametrizations and widths by design: its table keeps them apart itself
        from gqa_sweep.report.transfer import transfer_report

        return transfer_report(runs, out, FORMATS if args.format == "all" else [args.format], args.plots)
    groups = split(runs)
    if len(groups) == 1:
        return _one_group(args, runs, all_runs, out)
    print(f"gqa-report: these runs are {len(groups)} different computations (they differ in "
          f"{', '.join(groups[0].keys)}), never averaged together: each is reported apart, under {out}/<group>/")
    written, fitted = [], {}
    for i, g in enumerate(groups, 1):
        print(f"\n## Group {i}/{len(groups)}: {g.label} ({len(g.runs)} runs) -> {out / g.slug}/\n")
        try:
            written += _one_group(args, g.runs.reset_index(drop=True), all_runs, out / g.slug, fitted)
        except ReportError as e:
            raise ReportError(f"group {i}/{len(groups)} ({g.label}): {e}") from None
    if len(fitted) > 1:
        from gqa_sweep.report.scaling import scaling_compare

        tables = {"scaling_compare": scaling_compare(fitted)}
        print("\n## Side by side\n\n" + to_markdown("scaling_compare", tables["scaling_compare"]))
        written += write_tables(tables, out, FORMATS if args.format == "all" else [args.format])
    return written


def _one_group(args: argparse.Namespace, runs, all_runs, out: Path, fitted: dict | None = None) -> list[Path]:
    """The tables (and plots) of runs of one context (report/groups.py)."""
    formats = FORMATS if args.format == "all" else [args.format]
    if args.scaling:
        return _scaling_report(runs, out, formats, args.plots, args.draws, fitted)
    tables = build_tables(runs, all_runs)
    print("\n".join(to_markdown(name, t) for name, t in tables.items()))
    written = write_tables(tables, out, formats)
    if args.plots and "ablation" in tables:
        history = None if args.wandb else load_history(args.results_dir, runs.run_id)
        written += write_plots(make_plots(tables["ablation"], runs, history), out)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """`gqa-report`: print the Markdown tables, write table files (and plots) under --out."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.results_dir and not args.wandb:
        parser.error("give RESULTS_DIR (e.g. results/) or --wandb ENTITY/PROJECT")
    try:
        written = _report(args)
    except ReportError as e:
        print(f"gqa-report: error: {e}", file=sys.stderr)
        return 2
    where = os.path.commonpath([p.parent for p in written]) if written else ""
    print(f"gqa-report: wrote {len(written)} files to {where}/" if written else "", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

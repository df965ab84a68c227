"""The report: results store -> ablation tables (Markdown, LaTeX, CSV) and plots; `gqa-report` is `cli.main`."""

from gqa_sweep.report.cli import main
from gqa_sweep.report.conversion import conversion_table
from gqa_sweep.report.groups import split
from gqa_sweep.report.load import (
    ReportError,
    load_results,
    load_wandb,
    prepare,
    select_sweep,
)
from gqa_sweep.report.plots import (
    make_plots,
    plot_decode_vs_g,
    plot_kv_bytes_vs_g,
    plot_loss_curves,
    plot_ppl_vs_g,
    plot_ppl_vs_kv_bytes,
    write_plots,
)
from gqa_sweep.report.tables import (
    NOTES,
    TITLES,
    ablation_table,
    build_tables,
    lr_sensitivity_table,
    to_latex,
    to_markdown,
    write_tables,
)

__all__ = [
    "NOTES", "TITLES", "ReportError", "ablation_table", "build_tables", "conversion_table", "load_results",
    "load_wandb", "lr_sensitivity_table", "main", "make_plots", "plot_decode_vs_g", "plot_kv_bytes_vs_g",
    "plot_loss_curves", "plot_ppl_vs_g", "plot_ppl_vs_kv_bytes", "prepare", "select_sweep", "split", "to_latex",
    "to_markdown", "write_plots", "write_tables",
]

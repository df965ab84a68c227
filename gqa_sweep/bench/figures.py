"""What the benches' log-log figures share: a pyplot-free figure, the axes' dressing, PNG + SVG output."""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_axes() -> tuple[Figure, Axes]:
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: no global backend state
    return fig, fig.subplots()


def dress(ax: Axes, xlabel: str, ylabel: str, heading: str, **legend) -> None:
    """Log-log axes with their labels, a small title, a light grid and the legend."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(heading, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(**legend)


def save(fig: Figure, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    for p in paths:
        fig.savefig(p, dpi=150)
    return paths

"""What a plot says about its own numbers: error bars only where n > 1 (and a note where there are none), and
the setting the rows were measured in (precision, device, decode shape), read from the rows' columns."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.offsetbox import AnchoredText

NO_BAR = "n = 1, no error bar"


def yerr(std: Sequence[float], n: Sequence[float]) -> np.ndarray | None:
    """The std where a point has n > 1 runs behind it, NaN (no bar) elsewhere; None when no point has a bar.

    A single run has no spread: a zero-length bar would claim one of 0.
    """
    s = np.asarray(std, dtype=float)
    k = np.asarray(n, dtype=float)
    out = np.where((k > 1) & np.isfinite(s), s, np.nan)
    return None if np.isnan(out).all() else out


def errorbar(ax, x, y, std, n, **kw):
    """ax.errorbar with bars only where n > 1; returns the ErrorbarContainer."""
    kw.setdefault("capsize", 3)
    return ax.errorbar(x, y, yerr=yerr(std, n), **kw)


def n_note(ax, ns: Sequence[float], what: str = "runs") -> str:
    """Say in the axes what the error bars are and where there are none; returns the note."""
    k = pd.Series(ns, dtype=float).dropna()
    if k.empty:
        return ""
    lo, hi = int(k.min()), int(k.max())
    span = f"{lo}" if lo == hi else f"{lo}-{hi}"
    if hi <= 1:
        note = NO_BAR
    elif lo <= 1:
        note = f"error bars: ± sample std over n = {span} {what}; {NO_BAR}"
    else:
        note = f"error bars: ± sample std over n = {span} {what}"
    # An anchored box, not ax.text: it stays out of ax.texts (the point labels) and clear of the data.
    ax.add_artist(AnchoredText(note, loc="lower left", frameon=False, prop={"fontsize": 7, "color": "0.35"}))
    return note


def notes(ax) -> list[str]:
    """The notes n_note put in `ax`."""
    return [a.txt.get_text() for a in ax.artists if isinstance(a, AnchoredText)]


def _values(runs: pd.DataFrame | None, col: str) -> str:
    if runs is None or col not in runs:
        return "?"
    vals = [v for v in dict.fromkeys(runs[col].dropna().tolist()) if str(v) not in ("", "nan")]
    if not vals:
        return "?"
    return " / ".join(str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in vals)


def setting(runs: pd.DataFrame | None, decode: bool = False) -> str:
    """'precision P | device D' (and '| decode batch B, context C'); several values are listed, unknown is '?'."""
    text = f"precision {_values(runs, 'precision')} | device {_values(runs, 'device')}"
    if decode:
        text += f" | decode batch {_values(runs, 'decode_batch')}, context {_values(runs, 'decode_context')}"
    return text


def caption(fig, runs: pd.DataFrame | None, decode: bool = False) -> str:
    """Name the setting at the top of the figure (above the axes titles); returns the text."""
    text = setting(runs, decode)
    fig.suptitle(text, fontsize=8, color="0.3")
    return text


def contention(fig, runs: pd.DataFrame | None) -> str:
    """Say under the axes that the hollow points come from runs that shared their cores; returns the text."""
    util = pd.Series(dtype=float)
    if runs is not None and {"contended", "cpu_util"} <= set(runs.columns):
        util = runs.cpu_util[(runs.contended == 1) & (runs.status == "completed")].dropna()
    share = f" (CPU util {util.min():.0%}-{util.max():.0%} of their cores)" if len(util) else ""
    text = (f"hollow points: all their runs were contended{share}:\n"
            "speeds are lower bounds, not comparable across G; rerun on a quiet machine")
    fig.supxlabel(text, fontsize=7, color="C3")
    return text

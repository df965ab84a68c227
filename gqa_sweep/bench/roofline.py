"""`gqa-bench decode`'s roofline picture: bytes one step streams vs the time it takes, one point per G.

A decode step reads every matmul weight and the whole cache once, so its floor is bytes / bandwidth: two lines,
the datasheet's peak (GPUs in PEAK_HBM) and the measured device copy. A point on a line streams at that rate;
a point far above it is bound by something else (launches, the host, arithmetic).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from gqa_sweep.bench.common import Env, peak_bandwidth
from gqa_sweep.bench.figures import dress, new_axes, save


def plot_roofline(df: pd.DataFrame, copy_bw: float, peak_bw: float, title: str) -> Figure:
    fig, ax = new_axes()
    impl = df.decode_impl.iloc[0]
    for ctx, t in df.groupby("context"):
        line = ax.plot(t.bytes_per_step / 1e9, t[f"{impl}_ms_per_token"], marker="o", label=f"{impl}, context {ctx}")
        for x, y, G in zip(t.bytes_per_step / 1e9, t[f"{impl}_ms_per_token"], t.G):
            ax.annotate(f"G={G}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7,
                        color=line[0].get_color())  # fmt: skip
    gb = np.geomspace(df.bytes_per_step.min() / 2e9, df.bytes_per_step.max() * 2 / 1e9, 50)
    for bw, name, style in ((peak_bw, "datasheet", "--"), (copy_bw, "measured copy", ":")):
        if math.isfinite(bw):
            ax.plot(gb, gb * 1e9 / bw * 1e3, style, color="gray", label=f"{name}: {bw / 1e9:.0f} GB/s")
    dress(ax, "bytes per step: matmul weights + KV cache (GB)", "time per step (ms)", title, fontsize=8)
    return fig


def write_roofline(df: pd.DataFrame, env: Env, a, out: Path) -> list[Path]:
    """<out>/decode_roofline.png and .svg for the per-G decode table (not for --attention rows)."""
    title = (f"{a.model}, batch {a.batch}: decode step time vs bytes it streams\n"
             f"{env.device_name}, {env.dtype_name}, {env.date[:10]}")  # fmt: skip
    return save(plot_roofline(df, df.copy_GBps.iloc[0] * 1e9, peak_bandwidth(env.device_name), title), out,
                "decode_roofline")  # fmt: skip

"""gqa-bench coord: muP's coordinate check (Yang et al. 2022, Sec. 8; microsoft/mup's `coord_check`).

The same model at widths 64 .. 1024 (d_model; H heads of d_model / H), sp and mup side by side, at G = 1 and
G = H, trained for a few steps of Adam on tiny Shakespeare (characters; the same batches at every width). Before
each step t = 0 .. steps the RMS of each layer's activations is recorded (token embedding out, attention out
and MLP out averaged over layers, logits) and averaged over seeds. A parametrization is right when, from step 1
on, every curve is flat in width: `slope`, the least-squares slope of log RMS on log width, near 0. Under sp the
hidden updates grow with width (Adam's update of a fan-in-n matrix moves its output by ~ lr x n), so do the
curves. Writes <out>/coord.csv, coord.md (the table and the slopes) and coord.png.

    gqa-bench coord [--widths 64 128 256 512 1024] [--steps 4] [--lr 0.003] [--seeds 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from gqa_sweep.bench.common import make_env, write_table
from gqa_sweep.data.sources import load_shakespeare
from gqa_sweep.model.shape import PARAMETRIZATIONS, ModelConfig, build_shape
from gqa_sweep.model.transformer import DecoderLM
from gqa_sweep.train.module import param_groups

LAYERS = ("embedding", "attention", "mlp", "logits")


def char_batches(n: int, batch: int, seq: int, seed: int) -> tuple[list[torch.Tensor], int]:
    """`n` batches of (batch, seq + 1) character ids from tiny Shakespeare's first 90 % (its train split), and
    the vocabulary size (the characters of the whole text)."""
    text = load_shakespeare()
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    data = torch.tensor([stoi[c] for c in text[: int(0.9 * len(text))]], dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - seq - 1, (n, batch), generator=g)
    return [torch.stack([data[s : s + seq + 1] for s in row.tolist()]) for row in starts], len(stoi)


def rms(x: torch.Tensor) -> float:
    return x.detach().float().pow(2).mean().sqrt().item()


def coord_run(cfg: ModelConfig, batches: list[torch.Tensor], lr: float, seed: int) -> list[dict[str, float]]:
    """Per step t = 0 .. len(batches) - 1 (before its update): the RMS of each layer kind's output. Adam with the
    parametrization's per-parameter lr (train.module.param_groups), no decay, no clipping."""
    torch.manual_seed(seed)
    model = DecoderLM(cfg)
    opt = torch.optim.AdamW(param_groups(model, lr, 0.0), lr=lr)
    seen: dict[str, list[float]] = {}

    def hook(kind):
        return lambda module, args, out: seen.setdefault(kind, []).append(rms(out))

    model.embed.register_forward_hook(hook("embedding"))
    for block in model.layers:
        block.attn.register_forward_hook(hook("attention"))
        block.mlp.register_forward_hook(hook("mlp"))
    rows = []
    for t, xy in enumerate(batches):
        seen.clear()
        logits = model(xy[:, :-1])
        rows.append({**{k: sum(v) / len(v) for k, v in seen.items()}, "logits": rms(logits)})
        if t < len(batches) - 1:  # the last batch is only measured
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), xy[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return rows


def coord_table(widths: list[int], steps: int, lr: float, seeds: int, n_layers: int = 2, n_heads: int = 4,
                batch: int = 8, seq: int = 64, parametrizations=PARAMETRIZATIONS) -> pd.DataFrame:  # fmt: skip
    """One row per (parametrization, G, width, step): the seed-mean RMS of each layer kind."""
    rows = []
    for seed in range(seeds):
        batches, vocab = char_batches(steps + 1, batch, seq, seed)
        for p in parametrizations:
            for G in sorted({1, n_heads}):
                for width in widths:
                    cfg = build_shape(vocab_size=vocab, block_size=seq, n_layers=n_layers, d_model=width,
                                      n_heads=n_heads, n_kv_heads=G, parametrization=p,
                                      mup_base_width=widths[0] if p == "mup" else None)  # fmt: skip
                    for t, r in enumerate(coord_run(cfg, batches, lr, seed)):
                        rows.append({"parametrization": p, "G": G, "width": width, "step": t, "seed": seed, **r})
    df = pd.DataFrame(rows)
    return df.groupby(["parametrization", "G", "width", "step"], as_index=False)[list(LAYERS)].mean()


def slopes(df: pd.DataFrame) -> pd.DataFrame:
    """Least-squares slope of log RMS on log width, per (parametrization, G, step) and layer kind (NaN where an
    RMS is 0: muP's zero-init readout gives 0 logits at step 0)."""

    def fit(g: pd.DataFrame) -> pd.Series:
        x = g["width"].map(math.log)
        out = {}
        for kind in LAYERS:
            if (g[kind] <= 0).any():
                out[kind] = math.nan
                continue
            y = g[kind].map(math.log)
            out[kind] = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
        return pd.Series(out)

    keys = ["parametrization", "G", "step"]
    return pd.DataFrame([{**dict(zip(keys, k)), **fit(g)} for k, g in df.groupby(keys)])


def plot(df: pd.DataFrame, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(df.groupby(["parametrization", "G"]))
    fig, axes = plt.subplots(len(panels), len(LAYERS), figsize=(3.2 * len(LAYERS), 2.6 * len(panels)),
                             squeeze=False)  # fmt: skip
    steps = sorted(df["step"].unique())
    cmap = plt.get_cmap("viridis")
    for row, ((p, G), g) in zip(axes, panels):
        for ax, kind in zip(row, LAYERS):
            for t in steps:
                s = g[(g["step"] == t) & (g[kind] > 0)]
                ax.plot(s["width"], s[kind], "o-", ms=3, color=cmap(t / max(1, steps[-1])), label=f"step {t}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{p}, G={G}: {kind}", fontsize=9)
            ax.set_xlabel("width (d_model)", fontsize=8)
    axes[0][0].set_ylabel("RMS")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gqa-bench coord", description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024],
                   help="d_model values, smallest first; the first is muP's base width (default 64 .. 1024)")
    p.add_argument("--steps", type=int, default=4, help="Adam steps; RMS is recorded at steps 0 .. N (default 4)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam's lr, the sweep's optim.lr (default 0.003)")
    p.add_argument("--seeds", type=int, default=3, help="seeds averaged per point (default 3)")
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=4, help="H; G runs at 1 and H, d_head = width / H (default 4)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("results/bench"))
    a = p.parse_args(argv)
    bad = [w for w in a.widths if w % (2 * a.n_heads)]
    if bad or a.widths != sorted(set(a.widths)) or len(a.widths) < 2:
        print(f"gqa-bench coord: error: --widths must be >= 2 increasing multiples of 2 x n_heads = {2 * a.n_heads} "
              f"(d_head = width / H must be even){f'; {bad} are not' if bad else ''}", file=sys.stderr)  # fmt: skip
        return 2
    if a.steps < 1 or a.seeds < 1 or a.lr <= 0:
        print("gqa-bench coord: error: --steps and --seeds must be >= 1 and --lr > 0", file=sys.stderr)
        return 2
    env = make_env("cpu", "fp32")
    df = coord_table(a.widths, a.steps, a.lr, a.seeds, a.n_layers, a.n_heads, a.batch, a.seq)
    s = slopes(df)
    title = (f"coordinate check: RMS of activations vs width, {a.n_layers} layers, H={a.n_heads}, Adam lr={a.lr:g}, "
             f"batch {a.batch} x {a.seq} characters of tiny Shakespeare, mean of {a.seeds} seeds")  # fmt: skip
    notes = ("slope = least-squares slope of log RMS on log width (flat = 0; muP's base width is the smallest). "
             "Attention and MLP are averaged over layers; logits are the readout's output (muP: x base / width; "
             "zero-init readout, so its step-0 RMS is 0).\n\n" + s.to_markdown(index=False, floatfmt=".3f"))
    write_table(df, env, "coord", a.out, title, notes)
    print(f"wrote {plot(df, a.out / 'coord.png', title)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

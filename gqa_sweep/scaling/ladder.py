"""The size ladder of `experiment=ladder`: one rule, written out as conf/ladder/s*.yaml.

Every size has H = 4 query heads of d_head = 16 (so the KV bytes per token per layer, 2 * G * 16 * bytes, mean
the same thing at every size and G in {1, 2, 4} is shared by the whole ladder); depth and width grow together.
Each size trains for TOKENS_PER_PARAM tokens per non-embedding parameter of its MHA model (every G of a size sees
the same tokens, as in Cost-Optimal GQA), warms up for N tokens (1/20 of training; warm-up scaled to the size,
Porian et al. 2024), and uses lr = LR_REF * (N / N_REF) ** -LR_EXPONENT, a power law through the best lr of a
small grid at two sizes (experiment=ladder_lr; numbers below). `python -m gqa_sweep.scaling.ladder conf/ladder`
rewrites the yaml files; tests/test_scaling_ladder.py checks they equal what this module produces.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

from gqa_sweep.model.shape import ModelConfig, build_shape, non_embedding_params

N_HEADS = 4
D_HEAD = 16
VOCAB = 512  # bpe; a small vocabulary keeps the LM head from dominating N at the smallest sizes
BATCH, BLOCK = 16, 128  # 2,048 tokens per step
TOKENS_PER_PARAM = 20
# Train tokens of the ladder corpus (gqa_sweep/scaling/corpus.py over build-corpus.sh, BPE 512, val 10 %):
# measured 2026-12-02. data=text samples windows at random, so the expected passes over it are tokens / this.
CORPUS_TRAIN_TOKENS = 29_680_801
SHAPES = (("s1", 1, 20), ("s2", 1, 32), ("s3", 2, 40), ("s4", 2, 56), ("s5", 3, 64))  # (label, n_layers, d_model)
# More seeds where a run is cheap: the seed sigma of the fit's weights comes mostly from the small sizes.
SEEDS = {"s1": 3, "s2": 3, "s3": 2, "s4": 2, "s5": 2}

# lr rule: lr = LR_REF * (N / N_REF) ** -LR_EXPONENT, the least-squares line of log(best lr) on log N, where the
# best lr of a (shape, G) is the vertex of the parabola through its val losses at the lowest grid lr and its two
# neighbours (in log lr; a grid-edge minimum is kept at the edge and flagged). Grid: MQA (G=1) and MHA (G=4) at s1
# and s3, seed 0,
# sweep=ladder_lr, measured on the 2-core AMD EPYC, 2026-12-02 (val loss after the full s1 / s3 budget).
LR_GRID_SHAPES = {"s1": (1, 20), "s3": (2, 40)}  # (n_layers, d_model)
LR_GRID_LOSS: dict[tuple[str, int], dict[float, float]] = {
    ("s1", 1): {3e-3: 4.4754, 1e-2: 3.9886, 3e-2: 3.8953, 1e-1: 4.4452},  # 1e-1 added: 3e-2 was the edge
    ("s1", 4): {3e-3: 4.4908, 1e-2: 3.9821, 3e-2: 4.2019, 1e-1: 4.3272},
    ("s3", 1): {3e-3: 3.3939, 1e-2: 3.3094, 3e-2: 3.4834},
    ("s3", 4): {3e-3: 3.3743, 1e-2: 3.2520, 3e-2: 3.4483},
}


@dataclass(frozen=True)
class Size:
    label: str
    n_layers: int
    d_model: int
    n_params: int  # non-embedding parameters of the MHA model (the LM head included, as the store counts N)
    max_steps: int
    warmup_steps: int
    lr: float
    seeds: int
    tokens_per_step: int = BATCH * BLOCK
    n_heads: int = N_HEADS
    d_head: int = D_HEAD

    @property
    def tokens(self) -> int:
        return self.max_steps * self.tokens_per_step

    @property
    def epochs(self) -> float:
        """Expected passes over the ladder corpus (> 1: the data repeats)."""
        return self.tokens / CORPUS_TRAIN_TOKENS


def member(n_layers: int, d_model: int, n_kv_heads: int = N_HEADS, n_heads: int = N_HEADS, d_head: int = D_HEAD,
           vocab: int = VOCAB, block: int = BLOCK) -> ModelConfig:
    """A size of a ladder or of gqa-recommend's family: H heads of a fixed d_head at the given depth and width,
    every other field at its default (what a size file of conf/ladder sets)."""
    return build_shape(vocab_size=vocab, block_size=block, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                       n_kv_heads=n_kv_heads, d_head=d_head)


def mha_params(n_layers: int, d_model: int, n_kv_heads: int = N_HEADS) -> int:
    return non_embedding_params(member(n_layers, d_model, n_kv_heads))


def best_lr(losses: dict[float, float]) -> tuple[float, bool]:
    """(vertex of the parabola in log lr through the lowest loss and its two neighbours, whether that lowest
    loss sits at an edge of the grid, in which case the edge lr is returned)."""
    lrs = sorted(losses)
    i = min(range(len(lrs)), key=lambda j: losses[lrs[j]])
    if i in (0, len(lrs) - 1):
        return lrs[i], True
    (x0, x1, x2), (y0, y1, y2) = (math.log(lr) for lr in lrs[i - 1 : i + 2]), (losses[lr] for lr in lrs[i - 1 : i + 2])
    num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    return math.exp(x1 - 0.5 * num / den), False


def lr_rule() -> tuple[float, float, float]:
    """(LR_REF, N_REF, LR_EXPONENT) of lr = LR_REF * (N / N_REF) ** -LR_EXPONENT, fitted to the grid's best lrs."""
    pts = [(math.log(mha_params(*LR_GRID_SHAPES[size])), math.log(best_lr(loss)[0]))
           for (size, _), loss in LR_GRID_LOSS.items()]
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    return math.exp(my), math.exp(mx), -slope


def grid_edges() -> list[str]:
    """One line per (size, G) of the grid whose best lr sits at a grid edge (the optimum may lie outside)."""
    return [f"{size} G={G}: best lr {best_lr(loss)[0]:g} is at the edge of the grid {sorted(loss)}"
            for (size, G), loss in LR_GRID_LOSS.items() if best_lr(loss)[1]]


def commands(data_path: str = "CORPUS", extra: str = "") -> list[str]:
    """The sweeps that run the ladder, in the order that loses least if the chain is cut short: seed 0 of every
    size (a first fit), the further seeds of the smaller sizes (the seed sigma), the largest size's last."""
    base = f"gqa-sweep -m experiment=ladder data.path={data_path}{extra}"
    largest = SHAPES[-1][0]
    out = [f"{base} ladder={','.join(label for label, _, _ in SHAPES)} seed=0"]
    for seed in range(1, max(SEEDS.values())):
        labels = [label for label, _, _ in SHAPES if label != largest and SEEDS[label] > seed]
        if labels:
            out.append(f"{base} ladder={','.join(labels)} seed={seed}")
    out += [f"{base} ladder={largest} seed={seed}" for seed in range(1, SEEDS[largest])]
    return out


def sizes(tokens_per_param: float = TOKENS_PER_PARAM) -> list[Size]:
    lr_ref, n_ref, exponent = lr_rule()
    per_step = BATCH * BLOCK
    out = []
    for label, L, d in SHAPES:
        n = mha_params(L, d)
        steps = math.ceil(tokens_per_param * n / per_step)
        lr = float(f"{lr_ref * (n / n_ref) ** -exponent:.3g}")
        out.append(Size(label, L, d, n, steps, math.ceil(n / per_step), lr, SEEDS[label]))
    return out


def size_yaml(s: Size, generator: str = "python -m gqa_sweep.scaling.ladder conf/ladder") -> str:
    return (
        "# @package _global_\n"
        f"# Ladder size {s.label}: N = {s.n_params:,} non-embedding parameters (MHA), {s.tokens:,} tokens "
        f"({s.tokens / s.n_params:.1f} per parameter).\n"
        f"# Generated by `{generator}`: edit the rule there, not this file.\n"
        "model:\n"
        f"  name: ladder-{s.label}\n"
        f"  n_layers: {s.n_layers}\n"
        f"  d_model: {s.d_model}\n"
        f"  n_heads: {s.n_heads}\n"
        f"  d_head: {s.d_head}\n"
        "optim:\n"
        f"  lr: {s.lr:g}\n"
        f"  warmup_steps: {s.warmup_steps}\n"
        "trainer:\n"
        f"  max_steps: {s.max_steps}\n"
        f"  val_check_interval: {s.max_steps}\n"
        f"  ckpt_every_n_steps: {max(500, s.max_steps // 4)}\n"
    )


def write(directory: str | Path) -> list[Path]:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in sizes():
        p = d / f"{s.label}.yaml"
        p.write_text(size_yaml(s))
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    for p in write(argv[0] if argv else "conf/ladder"):
        print(p)
    for s in sizes():
        print(f"{s.label}: L={s.n_layers} d={s.d_model} N={s.n_params:,} steps={s.max_steps} warmup={s.warmup_steps} "
              f"lr={s.lr:g} seeds={s.seeds}")
    for line in grid_edges():
        print("flag:", line)
    print("\n".join(commands()))


if __name__ == "__main__":
    main()

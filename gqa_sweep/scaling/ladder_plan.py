"""A size ladder at the user's scale, from the command line or a preset instead of editing `ladder.SHAPES`.

    python -m gqa_sweep.scaling.ladder_plan --preset gpu --corpus-tokens 6e9 --flops-per-s 4e14
    python -m gqa_sweep.scaling.ladder_plan --sizes 4x384,8x640,12x1024 --n-heads 8 --d-head 64 --tokens-per-param 20

prints each size's non-embedding parameters N (its MHA model, as the store counts N), train tokens
(tokens_per_param x N, rounded up to whole steps), training FLOPs (6 N + 12 L H d_head T per token, as the row's
`flops_per_token`), the estimated time at a measured model FLOP/s (`--flops-per-s`, or the median
`model_flops_per_s` of the completed runs in `--results DIR`, i.e. this machine's own runs), and the `gqa-sweep`
command that trains it (every G of the size; model, steps and warm-up as overrides of experiment=ladder). A corpus
with fewer train tokens than the largest size needs is refused, with both numbers. Presets: `cpu` (the shipped
ladder, conf/ladder/s1..s5) and `gpu` (11M-263M parameters, H = 8 heads of d_head 64, 1,024-token windows, BPE 8192).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from gqa_sweep.model.shape import non_embedding_params, train_flops_per_token
from gqa_sweep.scaling import ladder


@dataclass(frozen=True)
class LadderShape:
    n_heads: int
    d_head: int
    shapes: tuple[tuple[str, int, int], ...]  # (label, n_layers, d_model)
    tokens_per_param: float = ladder.TOKENS_PER_PARAM
    batch: int = ladder.BATCH
    block: int = ladder.BLOCK
    vocab: int = ladder.VOCAB


PRESETS = {
    "cpu": LadderShape(ladder.N_HEADS, ladder.D_HEAD, ladder.SHAPES),
    # One GPU: 20 tokens per parameter of the largest is 5.3B tokens, 8.8e18 FLOPs.
    "gpu": LadderShape(8, 64, (("g1", 4, 384), ("g2", 6, 512), ("g3", 8, 640), ("g4", 10, 768), ("g5", 12, 1024),
                               ("g6", 16, 1280)), batch=32, block=1024, vocab=8192),
}


@dataclass(frozen=True)
class SizePlan:
    label: str
    n_layers: int
    d_model: int
    n_params: int
    steps: int
    warmup_steps: int
    tokens: int
    flops: float


def plan(shape: LadderShape) -> list[SizePlan]:
    per_step = shape.batch * shape.block
    out = []
    for label, L, d in shape.shapes:
        cfg = ladder.member(L, d, shape.n_heads, shape.n_heads, shape.d_head, shape.vocab, shape.block)
        n = non_embedding_params(cfg)
        steps = math.ceil(shape.tokens_per_param * n / per_step)
        tokens = steps * per_step
        out.append(SizePlan(label, L, d, n, steps, math.ceil(n / per_step), tokens,
                            tokens * train_flops_per_token(cfg, shape.block)))  # fmt: skip
    return out


def check_corpus(sizes: list[SizePlan], corpus_tokens: int) -> None:
    """Refuse a corpus smaller than the largest size's training tokens (the ladder would repeat data)."""
    big = max(sizes, key=lambda s: s.tokens)
    if corpus_tokens < big.tokens:
        raise ValueError(f"the corpus has {corpus_tokens:,} train tokens but size {big.label} (N = {big.n_params:,}) "
                         f"trains on {big.tokens:,}: use a corpus of at least {big.tokens:,} train tokens, fewer "
                         "tokens per parameter (--tokens-per-param) or smaller sizes")  # fmt: skip


def measured_runs(results_dir: str | Path, precision: str | None = None, cpu: bool | None = None,
                  uncontended: bool = True):
    """The store's completed runs with a model FLOP/s: of one precision and kind of device (CPU or not) when
    given, uncontended ones only unless told otherwise (a busy machine's FLOP/s is no estimate)."""
    from gqa_sweep.store.results import load_runs

    runs = load_runs(results_dir)
    if runs.empty:
        return runs
    keep = (runs.status == "completed") & runs.model_flops_per_s.notna()
    if uncontended:
        keep &= runs.contended != 1
    if precision is not None:
        keep &= runs.precision == precision
    if cpu is not None:
        keep &= runs.device.fillna("").str.startswith("CPU") == cpu
    return runs[keep]


def measured_flops_per_s(results_dir: str | Path) -> tuple[float, str]:
    """Median model_flops_per_s of the completed runs in a store, and where it came from."""
    done = measured_runs(results_dir, uncontended=False)
    if done.empty:
        raise ValueError(f"no completed run with model_flops_per_s in {results_dir}; train one first or give "
                         "--flops-per-s")  # fmt: skip
    devices = ", ".join(sorted(set(done.device.dropna().astype(str))))
    return float(done.model_flops_per_s.median()), f"median of {len(done)} runs in {results_dir} ({devices})"


def sp_lr(n_params: int) -> float:
    """The shipped ladder's lr rule (ladder.lr_rule, fitted at 19K-74K parameters), extrapolated to N: a starting
    point for sp; under muP tune the lr at the smallest size and keep it (experiment=mup_transfer)."""
    lr_ref, n_ref, exponent = ladder.lr_rule()
    return float(f"{lr_ref * (n_params / n_ref) ** -exponent:.3g}")


def size_files(preset: str) -> dict[str, str]:
    """conf/ladder/<label>.yaml of a preset's sizes (the `cpu` preset's are ladder.py's own s1-s5): model
    shape, sp's lr rule, warm-up and steps; experiment=ladder_gpu sets the data and trainer around them."""
    shape = PRESETS[preset]
    generator = f"python -m gqa_sweep.scaling.ladder_plan --preset {preset} --write conf/ladder"
    sizes = [ladder.Size(s.label, s.n_layers, s.d_model, s.n_params, max_steps=s.steps, warmup_steps=s.warmup_steps,
                         lr=sp_lr(s.n_params), seeds=1, tokens_per_step=shape.batch * shape.block,
                         n_heads=shape.n_heads, d_head=shape.d_head) for s in plan(shape)]  # fmt: skip
    return {s.label: ladder.size_yaml(s, generator) for s in sizes}


def command(shape: LadderShape, s: SizePlan, data_path: str = "CORPUS") -> str:
    return (f"gqa-sweep -m experiment=ladder ladder={ladder.SHAPES[0][0]} model.name=ladder-{s.label} "
            f"data.path={data_path} data.vocab_size={shape.vocab} "
            f"data.batch_size={shape.batch} data.block_size={shape.block} model.n_layers={s.n_layers} "
            f"model.d_model={s.d_model} model.n_heads={shape.n_heads} model.d_head={shape.d_head} "
            f"trainer.max_steps={s.steps} trainer.val_check_interval={s.steps} optim.warmup_steps={s.warmup_steps} "
            f"optim.lr={sp_lr(s.n_params):g} seed=0")  # fmt: skip


def preview(shape: LadderShape, flops_per_s: float | None = None, source: str = "") -> str:
    rows = ["| size | L | d_model | N | tokens | steps | FLOPs | est. time |", "|" + " --- |" * 8]
    for s in plan(shape):
        est = f"{s.flops / flops_per_s / 3600:.2f} h" if flops_per_s else "—"
        rows.append(f"| {s.label} | {s.n_layers} | {s.d_model} | {s.n_params:,} | {s.tokens:,} | {s.steps:,} | "
                    f"{s.flops:.3g} | {est} |")  # fmt: skip
    head = (f"ladder: H = {shape.n_heads} heads of d_head {shape.d_head}, {shape.tokens_per_param:g} tokens per "
            f"parameter, {shape.batch} x {shape.block} tokens per step, vocab {shape.vocab}; per G")  # fmt: skip
    time_note = (f"est. time per run = FLOPs / {flops_per_s:.3g} FLOP/s ({source})" if flops_per_s
                 else "est. time: give --flops-per-s or --results DIR (a store of this machine's runs)")  # fmt: skip
    return "\n".join([head, "", *rows, "", time_note])


def parse_sizes(text: str) -> tuple[tuple[str, int, int], ...]:
    """`4x384,8x640` -> ((s1, 4, 384), (s2, 8, 640)): n_layers x d_model per size, smallest first."""
    out = []
    for i, part in enumerate(text.split(","), 1):
        L, _, d = part.strip().partition("x")
        if not (L.isdigit() and d.isdigit()) or int(L) < 1 or int(d) < 1:
            raise ValueError(f"--sizes {text!r}: each size is n_layers x d_model, e.g. --sizes 4x384,8x640")
        out.append((f"s{i}", int(L), int(d)))
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gqa_sweep.scaling.ladder_plan", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--sizes", help="n_layers x d_model per size, e.g. 4x384,8x640 (default: the preset's)")
    for name in ("n_heads", "d_head", "batch", "block", "vocab"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, help="default: the preset's")
    p.add_argument("--tokens-per-param", type=float, help="default: the preset's (20)")
    p.add_argument("--corpus-tokens", type=float, help="train tokens of the corpus: refuse a smaller one")
    p.add_argument("--flops-per-s", type=float, help="measured model FLOP/s for the time estimate")
    p.add_argument("--results", help="a results dir: its runs' median model_flops_per_s for the time estimate")
    p.add_argument("--data-path", default="CORPUS", help="data.path in the printed commands")
    p.add_argument("--write", metavar="DIR", help="write the preset's size files there (conf/ladder) and stop")
    a = p.parse_args(argv)
    if a.write:
        if a.preset == "cpu":
            return ladder.main([a.write]) or 0
        for label, text in size_files(a.preset).items():
            (Path(a.write) / f"{label}.yaml").write_text(text)
            print(Path(a.write) / f"{label}.yaml")
        return 0
    shape = PRESETS[a.preset]
    try:
        if a.sizes:
            shape = replace(shape, shapes=parse_sizes(a.sizes))
        given = {k: getattr(a, k) for k in ("n_heads", "d_head", "batch", "block", "vocab", "tokens_per_param")}
        shape = replace(shape, **{k: v for k, v in given.items() if v is not None})
        sizes = plan(shape)
        flops, source = a.flops_per_s, "--flops-per-s"
        if flops is None and a.results:
            flops, source = measured_flops_per_s(a.results)
        print(preview(shape, flops, source))
        if a.corpus_tokens is not None:
            check_corpus(sizes, int(a.corpus_tokens))
    except ValueError as e:
        print(f"ladder_plan: error: {e}", file=sys.stderr)
        return 2
    print("\n" + "\n".join(command(shape, s, a.data_path) for s in sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`gqa-kv`: the KV-cache calculator's command line (the formulas and presets are gqa_sweep/model/kv.py).

    gqa-kv --preset llama3-70b --seq 8192 --batch 16 --dtype fp16 [--memory 80GB]

prints, for every G dividing H, the cache at that context and batch, its saving against MHA and, with a memory
budget, the largest batch that fits beside the weights. Torch-free, so it starts instantly.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from gqa_sweep.model.kv import PRESETS, Preset, dtype_bytes, human_bytes, kv_cache_bytes, kv_table, parse_bytes
from gqa_sweep.model.kv_formula import DTYPE_BYTES, divisors

SHAPE_FLAGS = ("layers", "heads", "kv_heads", "head_dim")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _preset(text: str) -> Preset:
    if text not in PRESETS:
        raise argparse.ArgumentTypeError(f"unknown preset {text!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[text]


def _dtype(text: str) -> str:
    try:
        dtype_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _byte_count(text: str) -> int:
    try:
        value = parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive byte count, got {text!r}")
    return value


def _weights(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return parse_bytes(text)  # 0 is allowed: count the KV cache only
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}, or auto") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gqa-kv",
        description="KV-cache size for every KV-head count G dividing H (MQA ... GQA ... MHA).",
        epilog="example: gqa-kv --preset llama3-70b --seq 8192 --batch 16 --dtype fp16 --memory 80GB",
    )
    p.add_argument("--preset", type=_preset, metavar="NAME", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    shape = p.add_argument_group("custom shape (instead of --preset; all four required)")
    shape.add_argument("--layers", type=_positive_int, help="decoder layers")
    shape.add_argument("--heads", type=_positive_int, help="query heads H")
    shape.add_argument("--kv-heads", type=_kv_heads,
                       help="the model's own KV heads G (marked with *), or one G per layer: 8,4,2,1")  # fmt: skip
    shape.add_argument("--head-dim", type=_positive_int, help="head size d_head")
    p.add_argument("--seq", type=_positive_int, default=4096, help="cached tokens per sequence (default 4096)")
    p.add_argument("--batch", type=_positive_int, default=1, help="sequences (default 1)")
    p.add_argument("--dtype", type=_dtype, default="fp16", help=f"cache dtype: {', '.join(DTYPE_BYTES)} (default fp16)")
    p.add_argument("--memory", type=_byte_count, help="memory budget, e.g. 80GB, 80GiB, 141e9: adds a max-batch column")
    p.add_argument("--weights-bytes", type=_weights,
                   help="bytes taken by weights under --memory: N (units allowed, 0 = KV only) or auto "
                        "(the default: preset parameters x dtype bytes)")
    p.add_argument("--format", choices=("text", "md", "csv"), default="text", help="output format (default text)")
    att = p.add_argument_group("attention type (gqa_sweep/model/kv_formula.py: one formula per type)")
    att.add_argument("--attention", choices=("gqa", "gta", "mla"), default="gqa",
                     help="gqa (default: every G), gta (grouped-tied: G*d_head + d_R per layer), mla (latent: "
                          "d_c + d_R per layer; --kv-heads not needed)")  # fmt: skip
    att.add_argument("--rope-dim", type=_positive_int, help="gta / mla: d_R (default head-dim / 2)")
    att.add_argument("--kv-lora-rank", type=_positive_int, help="mla: latent d_c (default 4 x head-dim)")
    return p


def _resolve_shape(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Preset:
    """The preset, or a Preset built from the four shape flags (n_params=0: unknown)."""
    given = [d for d in SHAPE_FLAGS if getattr(args, d) is not None]
    if args.preset is not None:
        if given:
            parser.error(f"give either --preset or the shape flags, not both (drop {' '.join(map(_flag, given))})")
        return args.preset
    if not given:
        parser.error(f"give --preset NAME (one of: {', '.join(PRESETS)}) or all of "
                     f"{' '.join(map(_flag, SHAPE_FLAGS))}")
    if args.attention == "mla" and args.kv_heads is None:  # MLA has no KV groups
        args.kv_heads = args.heads
    missing = [d for d in SHAPE_FLAGS if getattr(args, d) is None]
    if missing:
        parser.error(f"custom shape is incomplete: add {' '.join(map(_flag, missing))}")
    layout = args.kv_heads if isinstance(args.kv_heads, list) else [args.kv_heads]
    if isinstance(args.kv_heads, list) and len(layout) != args.layers:
        parser.error(f"--kv-heads {','.join(map(str, layout))} gives {len(layout)} layers' G but --layers is "
                     f"{args.layers}; give one G per layer")
    for i, g in enumerate(layout):
        if args.heads % g:
            where = f" (layer {i})" if len(layout) > 1 else ""
            parser.error(f"--kv-heads {g}{where} does not divide --heads {args.heads}; "
                         f"choose one of: {', '.join(map(str, divisors(args.heads)))}")
    return Preset("custom", args.layers, args.heads, args.kv_heads, args.head_dim,
                  args.heads * args.head_dim, n_params=0, source="command line")


def _resolve_weights(parser: argparse.ArgumentParser, args: argparse.Namespace, shape: Preset) -> int:
    """Bytes the weights take under --memory (0 without --memory)."""
    if args.memory is None:
        if args.weights_bytes is not None:
            parser.error("--weights-bytes only applies with --memory: add --memory, e.g. --memory 80GB")
        return 0
    if args.weights_bytes not in (None, "auto"):
        return args.weights_bytes
    if shape.n_params == 0:
        parser.error("a custom shape has no parameter count: pass --weights-bytes N (0 counts the KV cache only)")
    return shape.weight_bytes(args.dtype)


def _display(df: pd.DataFrame, memory_bytes: int | None) -> pd.DataFrame:
    """Human-readable columns; the model's own G gets a '*'."""
    out = pd.DataFrame({
        "G": [f"{g}*" if own else str(g) for g, own in zip(df["G"], df["own"])],
        "H/G": df["group_size"],
        "kind": df["kind"],
        "bytes/token": [f"{b:,}" for b in df["bytes_per_token"]],
        "KV cache": [human_bytes(x) for x in df["kv_bytes"]],
        "KV cache (2^10)": [human_bytes(x, binary=True) for x in df["kv_bytes"]],
        "saved vs MHA": [f"{x:.2f}%" for x in df["saved_pct"]],
    })
    if memory_bytes is not None:
        out[f"max batch in {human_bytes(memory_bytes)}"] = df["max_batch"]
    return out


def _header(shape: Preset, args: argparse.Namespace) -> str:
    nbytes = DTYPE_BYTES[args.dtype]
    return (f"{shape.name}: {shape.n_layers} layers, H={shape.n_heads} query heads, d_head={shape.d_head}; "
            f"seq {args.seq}, batch {args.batch}, {args.dtype} ({nbytes:g} bytes/element); "
            f"* = the model's own G ({_g_label(shape.n_kv_heads)})")


def _g_label(G: int | list[int]) -> str:
    return ",".join(map(str, G)) + " per layer" if isinstance(G, list) else str(G)


def _memory_notes(df: pd.DataFrame, memory_bytes: int, weights_bytes: int, seq: int) -> list[str]:
    notes = [f"max batch: largest batch at seq {seq} whose KV cache + weights ({human_bytes(weights_bytes)}) "
             f"fit in {human_bytes(memory_bytes)}"]
    if weights_bytes >= memory_bytes:
        notes.append(f"note: the weights alone ({human_bytes(weights_bytes)}) do not fit in "
                     f"{human_bytes(memory_bytes)}: "
                     f"max batch is 0 for every G; raise --memory, or use a smaller --dtype or --weights-bytes")
    elif (df["max_batch"] == 0).any():
        notes.append("note: max batch 0 means not even one sequence fits next to the weights")
    return notes


def _list_presets() -> str:
    df = pd.DataFrame([{
        "preset": p.name, "layers": p.n_layers, "H": p.n_heads, "G": p.n_kv_heads, "d_head": p.d_head,
        "d_model": p.d_model, "params (1e9)": f"{p.n_params / 1e9:.2f}",
        "KV bytes/token fp16": f"{kv_cache_bytes(p.n_kv_heads, p.d_head, p.n_layers, 1, 1, 2):,}",
        "config": p.source,
    } for p in PRESETS.values()])
    return df.to_string(index=False)


def _kv_heads(text: str) -> int | list[int]:
    values = [_positive_int(v) for v in text.split(",")]
    return values[0] if len(values) == 1 else values


def main(argv: list[str] | None = None) -> int:
    """Entry point of `gqa-kv`; argument errors exit with status 2 (argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_presets:
        print(_list_presets())
        return 0
    shape = _resolve_shape(parser, args)
    weights = _resolve_weights(parser, args, shape)
    per_layer = shape.n_kv_heads if isinstance(shape.n_kv_heads, list) else None
    if args.attention != "gqa":
        return _variant_main(parser, args, shape, weights, per_layer)
    if args.rope_dim is not None or args.kv_lora_rank is not None:
        parser.error("--rope-dim and --kv-lora-rank apply to --attention gta or mla; add --attention")
    df = kv_table(shape.n_layers, shape.n_heads, shape.d_head, args.seq, args.batch, args.dtype,
                  n_kv_heads=None if per_layer else shape.n_kv_heads, memory_bytes=args.memory,
                  weights_bytes=weights, layout=per_layer)  # fmt: skip
    notes = _memory_notes(df, args.memory, weights, args.seq) if args.memory is not None else []
    if args.format == "csv":
        print(df.to_csv(index=False), end="")
        for line in notes:  # stderr keeps stdout parseable
            print(line, file=sys.stderr)
        return 0
    table = _display(df, args.memory)
    if args.format == "md":  # numparse off, else tabulate prints "5.00" as "5"
        align = ["left" if c == "kind" else "right" for c in table.columns]
        body = table.to_markdown(index=False, disable_numparse=True, colalign=align)
    else:
        body = table.to_string(index=False)
    print("\n".join([_header(shape, args), "", body, *([""] if notes else []), *notes]))
    return 0


def _variant_main(parser, args, shape: Preset, weights: int, per_layer) -> int:
    from gqa_sweep.model.kv_variants import display, variant_table

    if per_layer:
        parser.error(f"--attention {args.attention} takes one --kv-heads G, not a per-layer list")
    if args.attention == "gta" and args.kv_lora_rank is not None:
        parser.error("--kv-lora-rank applies to --attention mla only; drop it")
    try:
        df = variant_table(args.attention, shape.n_layers, shape.n_heads, shape.d_head, args.seq, args.batch,
                           DTYPE_BYTES[args.dtype], n_kv_heads=shape.n_kv_heads, rope_dim=args.rope_dim,
                           kv_lora_rank=args.kv_lora_rank, memory_bytes=args.memory, weights_bytes=weights)  # fmt: skip
    except ValueError as e:
        parser.error(str(e))
    table = display(df, args.memory, human_bytes)
    if args.format == "csv":
        print(df.to_csv(index=False), end="")
        return 0
    d_r = args.rope_dim or shape.d_head // 2
    gta = f"GTA: G * d_head + d_R (d_R = {d_r}) elements per token per layer"
    mla = f"MLA: d_c + d_R = {df.elements_per_layer.iloc[0] - d_r} + {d_r} elements per token per layer (no G)"
    what = gta if args.attention == "gta" else mla
    body = (table.to_markdown(index=False, disable_numparse=True) if args.format == "md"
            else table.to_string(index=False))  # fmt: skip
    mha = 2 * shape.n_heads * shape.d_head
    header = _header(shape, args)
    if args.attention == "mla":
        header = header[: header.index("; * = ")]
    print("\n".join([header, f"{what}; MHA: 2 * H * d_head = {mha:,}", "", body]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""KV-cache memory of grouped-query attention: size formula, model presets, max batch under a budget.

A decoder with G KV heads of size d_head caches K and V for every layer and token:
    bytes = 2 * G * d_head * n_layers * seq_len * batch_size * bytes_per_element.
`kv_table` evaluates it for every G dividing H (MQA ... MHA); `gqa-kv` prints that table.
This module deliberately avoids importing torch so the CLI starts instantly.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass

import pandas as pd

from gqa_sweep.model.kv_formula import DTYPE_BYTES

_DECIMAL_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_BINARY_UNITS = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
BYTE_UNITS: dict[str, int] = {**_DECIMAL_UNITS, **_BINARY_UNITS}


@dataclass(frozen=True)
class Preset:
    """Attention shape of a public model, from its Hugging Face config.json."""

    name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int | list[int]  # a list: one G per layer (a custom shape only)
    d_head: int
    d_model: int
    n_params: int  # total parameters, embeddings and untied LM head included
    source: str  # Hugging Face repository whose config.json the numbers come from

    def weight_bytes(self, dtype: str) -> int:
        return math.ceil(self.n_params * dtype_bytes(dtype))


# n_params: exact counts from the config shapes (vocab, hidden, intermediate, layers, heads, biases),
# matching the safetensors totals the Hub reports.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("llama2-70b", 80, 64, 8, 128, 8192, 68_976_648_192, "meta-llama/Llama-2-70b-hf"),
        Preset("llama3-8b", 32, 32, 8, 128, 4096, 8_030_261_248, "meta-llama/Meta-Llama-3-8B"),
        Preset("llama3-70b", 80, 64, 8, 128, 8192, 70_553_706_496, "meta-llama/Meta-Llama-3-70B"),
        Preset("mistral-7b", 32, 32, 8, 128, 4096, 7_241_732_096, "mistralai/Mistral-7B-v0.1"),
        Preset("qwen2.5-72b", 80, 64, 8, 128, 8192, 72_706_203_648, "Qwen/Qwen2.5-72B"),
        # The Falcon-40B model card says "multiquery", but its config.json has
        # new_decoder_architecture=true, num_kv_heads=8: 8 KV groups over 128 query heads (the
        # Falcon paper's "multigroup" attention), i.e. GQA with G=8. Falcon-7B is the MQA one.
        Preset("falcon-40b", 60, 128, 8, 64, 8192, 41_835_970_560, "tiiuae/falcon-40b"),
    )
}


def divisors(n: int) -> list[int]:
    """Divisors of n in increasing order (model.py has the same helper, but importing it pulls in torch)."""
    return [d for d in range(1, n + 1) if n % d == 0]


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of a cache dtype name; ValueError naming the valid names."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def kv_cache_bytes(
    n_kv_heads: int, d_head: int, n_layers: int, seq_len: int, batch_size: int, bytes_per_element: float
) -> int:
    """K and V cache size in bytes: 2 * G * d_head * n_layers * seq_len * batch_size * bytes_per_element.

    Sub-byte dtypes (int4) round up to whole bytes.
    """
    _check_positive(n_kv_heads=n_kv_heads, d_head=d_head, n_layers=n_layers, seq_len=seq_len, batch_size=batch_size)
    if bytes_per_element <= 0:
        raise ValueError(f"bytes_per_element must be positive, got {bytes_per_element!r}")
    elements = 2 * n_kv_heads * d_head * n_layers * seq_len * batch_size
    return math.ceil(elements * bytes_per_element)


def max_batch_size(
    memory_bytes: int, weights_bytes: int, n_kv_heads: int, d_head: int, n_layers: int, seq_len: int,
    bytes_per_element: float,
) -> int:
    """Largest batch whose KV cache at seq_len plus the weights fits in memory_bytes (0 if none)."""
    per_sequence = kv_cache_bytes(n_kv_heads, d_head, n_layers, seq_len, 1, bytes_per_element)
    return max(memory_bytes - weights_bytes, 0) // per_sequence


def attention_kind(n_kv_heads: int, n_heads: int) -> str:
    """MHA when every query head has its own KV head (checked first, so H=1 is MHA), MQA for one KV head."""
    if n_kv_heads == n_heads:
        return "MHA"
    return "MQA" if n_kv_heads == 1 else "GQA"


def kv_table(
    n_layers: int,
    n_heads: int,
    d_head: int,
    seq_len: int,
    batch_size: int,
    dtype: str = "fp16",
    n_kv_heads: int | None = None,
    memory_bytes: int | None = None,
    weights_bytes: int = 0,
    layout: list[int] | None = None,
) -> pd.DataFrame:
    """One row per G dividing n_heads: KV-cache size at (seq_len, batch_size) and the saving vs MHA; with
    `layout` (one G per layer) a last row for that per-layer model, G = "4,2,1,1", own = True.

    Columns: G, group_size (H/G), kind, own (G == n_kv_heads, the model's own choice), bytes_per_token,
    kv_bytes, kv_GB (10^9), kv_GiB (2^30), saved_pct (vs G=H); with memory_bytes also max_batch, the
    largest batch at seq_len whose cache plus weights_bytes fits.
    """
    _check_positive(n_layers=n_layers, n_heads=n_heads, d_head=d_head, seq_len=seq_len, batch_size=batch_size)
    if n_kv_heads is not None and (n_kv_heads < 1 or n_heads % n_kv_heads):
        raise ValueError(f"n_kv_heads={n_kv_heads} does not divide n_heads={n_heads}; "
                         f"choose one of: {', '.join(map(str, divisors(n_heads)))}")
    nbytes = dtype_bytes(dtype)
    rows = []
    for g in divisors(n_heads):
        total = kv_cache_bytes(g, d_head, n_layers, seq_len, batch_size, nbytes)
        row = {
            "G": g,
            "group_size": n_heads // g,
            "kind": attention_kind(g, n_heads),
            "own": g == n_kv_heads,
            "bytes_per_token": kv_cache_bytes(g, d_head, n_layers, 1, 1, nbytes),
            "kv_bytes": total,
            "kv_GB": total / 1e9,
            "kv_GiB": total / 2**30,
            "saved_pct": 100.0 * (1 - g / n_heads),
        }
        if memory_bytes is not None:
            row["max_batch"] = max_batch_size(memory_bytes, weights_bytes, g, d_head, n_layers, seq_len, nbytes)
        rows.append(row)
    if layout is not None:
        rows.append(_layout_row(layout, n_layers, n_heads, d_head, seq_len, batch_size, nbytes, memory_bytes,
                                weights_bytes))  # fmt: skip
    return pd.DataFrame(rows)


def _layout_row(layout: list[int], n_layers: int, n_heads: int, d_head: int, seq_len: int, batch_size: int,
                nbytes: float, memory_bytes: int | None, weights_bytes: int) -> dict:  # fmt: skip
    """A per-layer model caches sum_l G_l heads per token: the formula with G * n_layers -> sum_l G_l."""
    if len(layout) != n_layers or any(g < 1 or n_heads % g for g in layout):
        raise ValueError(f"layout={layout} must give one divisor of n_heads={n_heads} per layer ({n_layers} layers)")
    heads = sum(layout)
    total = kv_cache_bytes(heads, d_head, 1, seq_len, batch_size, nbytes)
    row = {
        "G": ",".join(map(str, layout)), "group_size": "per layer", "kind": "per-layer", "own": True,
        "bytes_per_token": kv_cache_bytes(heads, d_head, 1, 1, 1, nbytes), "kv_bytes": total,
        "kv_GB": total / 1e9, "kv_GiB": total / 2**30, "saved_pct": 100.0 * (1 - heads / (n_heads * n_layers)),
    }
    if memory_bytes is not None:
        row["max_batch"] = max_batch_size(memory_bytes, weights_bytes, heads, d_head, 1, seq_len, nbytes)
    return row


def parse_bytes(text: str) -> int:
    """'80GB' -> 80e9, '80GiB' -> 80 * 2^30, '141e9' -> 141e9 (decimal units are powers of 1000)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).lower() if m else None
    if unit not in BYTE_UNITS or not math.isfinite(float(m.group(1))):
        raise ValueError(f"cannot parse {text!r} as a byte count; write e.g. 80GB, 80GiB, 141e9 "
                         f"(units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    return int(float(m.group(1)) * BYTE_UNITS[unit])


# ---------------------------------------------------------------- CLI

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


def human_bytes(nbytes: float, binary: bool = False) -> str:
    """A byte count in the largest unit it reaches (512 B, 1.05 MB, 34.36 GB; binary: 32.00 GiB), so a
    small model's cache is not printed as 0.00 GB."""
    base, units = (1024, ("B", "KiB", "MiB", "GiB", "TiB")) if binary else (1000, ("B", "KB", "MB", "GB", "TB"))
    power = 0
    while power < len(units) - 1 and abs(nbytes) >= base ** (power + 1):
        power += 1
    return f"{nbytes:,.0f} B" if power == 0 else f"{nbytes / base**power:.2f} {units[power]}"


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

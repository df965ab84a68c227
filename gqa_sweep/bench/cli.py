"""gqa-bench: attention, decode, serving and training-throughput benchmarks across G, beside references.

    gqa-bench attention [--batch B --seq T --heads H --d-head D]
    gqa-bench decode    [--model cache-bound|tiny|small|gpt2-124m --batch B --context 1024 4096 --new-tokens N]
    gqa-bench serve     [--model ... --context T --memory 2GB --new-tokens N]
    gqa-bench train     [--model tiny|small|gpt2-124m --batch B --seq T --steps N]
    gqa-bench startup   [--repeats N --out DIR]  (start-up time of gqa-sweep's bad-input path and --help)
    gqa-bench peak      [--remeasure --dtypes fp32 bf16 --threads N --out DIR]  (the peak FLOP/s behind MFU)
    gqa-bench coord     [--widths 64 .. 1024 --steps 4 --lr 0.003 --seeds 3 --out DIR]  (muP's coordinate check)
    common: [--quick] [--out DIR] [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--repeats N] [--warmup N]
            [--profile]  (also write a torch.profiler table of the top ops of each implementation)

Every subcommand sweeps G over the divisors of H, prints one row per case and writes `<out>/<kind>.csv`
(device, dtype, torch version and date as columns) and `<out>/<kind>.md` (the same in the header); serve
also draws `<out>/serve.png` and `.svg`. Competing implementations are timed interleaved in one process.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

from gqa_sweep.bench.attention import bench_attention
from gqa_sweep.bench.common import DTYPES, PRESETS, make_env, model_config, write_table
from gqa_sweep.bench.decode import bench_decode
from gqa_sweep.bench.roofline import write_roofline
from gqa_sweep.bench.serve import bench_serve, gqa_kv_command, write_plot
from gqa_sweep.bench.train import bench_train
from gqa_sweep.bench.variants import NOTE as VARIANT_NOTE
from gqa_sweep.model import kv
from gqa_sweep.model.decode import MODES, resolve_mode

# Defaults per subcommand: (full, quick). Full sizes finish in minutes on a 2-core CPU; quick in seconds.
_TINY = dict(n_heads=(None, 4), d_model=(None, 64), vocab_size=(None, 256))
DEFAULTS = {
    "attention": dict(batch=(4, 1), seq=(1024, 64), heads=(16, 4), d_head=(64, 16), repeats=(10, 3), warmup=(2, 1)),
    "decode": dict(model=("cache-bound", "tiny"), batch=(16, 2), context=([1024, 4096], [16, 32]),
                   new_tokens=(4, 2), repeats=(7, 3), warmup=(1, 1), **_TINY),
    "serve": dict(model=("cache-bound", "tiny"), context=(1024, 32), memory=("2GB", "1MB"), new_tokens=(4, 2),
                  repeats=(3, 2), warmup=(1, 1), **_TINY),
    "train": dict(model=("small", "tiny"), batch=(4, 2), seq=(256, 32), steps=(4, 2), repeats=(3, 2),
                  warmup=(1, 1), **_TINY),
}  # fmt: skip
TITLES = {
    "attention": "causal SDPA forward+backward, grouped (enable_gqa) vs repeat-KV reference",
    "decode": "KV-cached greedy decode per token: ours folded vs ours unfolded vs HF Llama, same weights",
    "serve": "decode throughput vs latency as the batch doubles until weights + KV cache fill --memory",
    "train": "training tokens/s: Lightning harness vs bare loop vs transformers LlamaForCausalLM",
}
NOTES = {
    "attention": "time_ratio = grouped_ms / reference_ms (medians); peak = torch bytes allocated above the inputs "
    "during one forward+backward (CPU: replayed torch.profiler memory events).",
    "decode": "Each impl decodes `new_tokens` single-token steps from a cache of `context` tokens (random K/V drawn "
    "on the device); <impl>_ms_per_token = median step time (latency per token of one sequence), <impl>_tok_s = "
    "batch / step; graph (CUDA) = our static-cache step captured once in a CUDA graph and replayed, folded = our "
    "eager step with the group's query heads folded into the query axis (the CPU default), unfolded = SDPA "
    "enable_gqa, hf = transformers LlamaForCausalLM + DynamicCache with the same weights. bytes_per_step = "
    "cache bytes + matmul weight bytes, read once per step (bytes_per_token = that / batch); <impl>_GBps = "
    "bytes_per_step / step time; decode_impl = the impl the next columns are about (graph on CUDA, else folded); "
    "copy_GBps = measured 2 x bytes / time of a 512 MiB tensor.copy_ (read + write); frac_of_copy = its GBps / "
    "copy_GBps; hbm_frac = its GBps / datasheet HBM peak (NaN on CPU). vs_mha = its tok_s / tok_s at G=H; "
    "ideal_vs_mha = bytes_per_step at G=H / this G's (the speed-up if a step only streamed its bytes); vs_ideal = "
    "vs_mha / ideal_vs_mha. setup_s = build + cache fill + graph capture of this G, not in any step. attn_*_ms = "
    "one single-token SDPA call alone at (batch, H, context, d_head); attn_vs_proportional = attn_folded_ms / "
    "(attn_folded_ms at G=H x G/H), 1 = proportional to G; attn_hot_ms = the folded call's arithmetic: the same "
    "call one sequence at a time, `batch` times over one sequence whose K/V stay in the CPU cache (where they fit: "
    "G x context x d_head x 8 bytes); attn_hot_frac = attn_hot_ms / attn_folded_ms, near 1 = the call is bound by "
    "arithmetic, not by reading the cache, so it cannot shrink in proportion to G. decode_roofline.png: "
    "bytes_per_step vs step time per G, with the datasheet and measured-copy bandwidth lines.",
    "serve": "batch doubles from 1 (--batches max: only the last), then the largest batch (max_batch) whose weights "
    "(all parameters) + KV cache of `context` tokens per sequence fit in memory_bytes, as `gqa-kv --memory` "
    "computes it; one G's model on the device at a time; the cache ends each timed call holding exactly `context` "
    "tokens; ms_per_token = median step time (graph-replayed on CUDA, --decode-mode), tokens_per_s = batch / "
    "step; setup_s = build (first batch) + cache fill + graph capture, not in any step; at max_batch: max_vs_mha "
    "= tokens_per_s / MHA's at its max_batch, seed001_vs_mha = seed 001's 70B-on-4xA100 ratio (MHA 800, GQA-8 "
    "3200, MQA 4000 tok/s); activations and logits are not counted.",
    "train": "tokens/s medians over rounds, each round = warm-up + timed steps; harness_over_bare = harness/bare; "
    "ours_over_hf = bare/hf (same loop, same weights, same AdamW and clipping); FLOPs/token = 6N + 12*L*H*d_head*T "
    "(N without the embedding table); <impl>_mfu = <impl>_tok_s x flops/token / peak_TFLOPs, the datasheet peak of "
    "a known GPU or else the measured dense-matmul peak in the run's dtype (peak_source; gqa_sweep/train/peak.py).",
}
BENCHES = {"attention": bench_attention, "decode": bench_decode, "serve": bench_serve, "train": bench_train}


def positive(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} must be a positive integer")
    return v


def non_negative(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} must be >= 0")
    return v


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quick", action="store_true", help="tiny sizes that finish in seconds on CPU")
    common.add_argument("--out", type=Path, default=Path("results/bench"), help="output dir (default results/bench)")
    common.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    common.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default bf16 on cuda, fp32 on cpu")
    common.add_argument("--repeats", type=positive, help="timed repeats (train: rounds)")
    common.add_argument("--warmup", type=non_negative, help="untimed warm-up calls (train: steps per round)")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--profile", action="store_true", help="also write <out>/<kind>_profile.txt (top ops)")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", choices=tuple(PRESETS))
    model.add_argument("--n-layers", dest="n_layers", type=positive)
    model.add_argument("--n-heads", dest="n_heads", type=positive)
    model.add_argument("--d-model", dest="d_model", type=positive)
    model.add_argument("--d-head", dest="d_head", type=positive)
    model.add_argument("--vocab-size", dest="vocab_size", type=positive)
    model.add_argument("--tie-embeddings", dest="tie_embeddings", action=argparse.BooleanOptionalAction, default=None)

    attn = argparse.ArgumentParser(add_help=False)  # decode / serve: attention types side by side
    attn.add_argument("--attention", nargs="+", choices=("gqa", "gta", "mla"), default=["gqa"],
                      help="attention types to compare (default gqa alone: the per-G GQA table)")  # fmt: skip
    attn.add_argument("--rope-dim", dest="rope_dim", type=positive, help="gta / mla: d_R (default d_head / 2)")
    attn.add_argument("--kv-lora-rank", dest="kv_lora_rank", type=positive, help="mla: d_c (default 4 d_head)")
    attn.add_argument("--decode-mode", dest="decode_mode", choices=MODES, default="auto",
                      help="our decode step: graph (a CUDA graph of the static-cache step, replayed), eager, or auto "
                      "(graph on cuda, eager on cpu)")  # fmt: skip

    p = argparse.ArgumentParser(prog="gqa-bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    att = sub.add_parser("attention", parents=[common], help=TITLES["attention"])
    for flag in ("batch", "seq", "heads", "d-head"):
        att.add_argument(f"--{flag}", dest=flag.replace("-", "_"), type=positive)
    dec = sub.add_parser("decode", parents=[common, model, attn], help=TITLES["decode"])
    dec.add_argument("--batch", type=positive)
    dec.add_argument("--context", type=positive, nargs="+", help="cached tokens, e.g. --context 1024 4096")
    dec.add_argument("--new-tokens", dest="new_tokens", type=positive, help="decode steps per timed call")
    srv = sub.add_parser("serve", parents=[common, model, attn], help=TITLES["serve"])
    srv.add_argument("--context", type=positive, help="tokens cached per sequence (default 1024)")
    srv.add_argument("--memory", help="budget for weights + KV cache, e.g. 2GB, 512MiB (default 2GB on cpu, the "
                     "device's memory on cuda)")  # fmt: skip
    srv.add_argument("--new-tokens", dest="new_tokens", type=positive, help="decode steps per timed call")
    srv.add_argument("--batches", choices=("all", "max"), default="all",
                     help="all: 1, 2, 4, ... up to the largest batch that fits; max: that batch alone (a 7B table)")
    tr = sub.add_parser("train", parents=[common, model], help=TITLES["train"])
    for flag in ("batch", "seq", "steps"):
        tr.add_argument(f"--{flag}", type=positive)
    # main() hands these two their own parsers (options of their own); listed here so --help names all six
    sub.add_parser("startup", help="start-up time of gqa-sweep's bad-input path and --help (gqa-bench startup -h)")
    sub.add_parser("peak", help="the peak FLOP/s behind MFU, per dtype (gqa-bench peak -h)")
    return p


def resolve(a: argparse.Namespace) -> argparse.Namespace:
    """Fill unset options from the full or --quick defaults; explicit options always win."""
    gpu_memory = a.kind == "serve" and a.memory is None and a.device == "cuda" and not a.quick
    for key, (full, quick) in DEFAULTS[a.kind].items():
        if getattr(a, key, None) is None:
            setattr(a, key, quick if a.quick else full)
    if gpu_memory:
        a.memory = None  # serve on CUDA: the device's own memory
    if a.dtype is None:
        a.dtype = "bf16" if a.device == "cuda" else "fp32"
    if a.kind in ("decode", "serve", "train"):
        cfg = model_config(a, 1)  # validates the size options early, with the model's own messages
        if a.kind == "train" and a.seq > cfg.block_size:
            raise ValueError(f"--seq {a.seq} exceeds the {a.model} block_size={cfg.block_size}; use --seq <= it")
    if a.kind in ("decode", "serve"):
        resolve_mode(a.decode_mode, a.device)  # graph off CUDA: an error that names the fix, before any model
    if a.kind == "serve":
        if a.memory is not None:
            kv.parse_bytes(a.memory)  # its message names the accepted units
        if a.new_tokens >= a.context:
            raise ValueError(f"--new-tokens {a.new_tokens} must be below --context {a.context}: the cache is "
                             f"filled to context - new tokens, then decoded to context")  # fmt: skip
    if a.kind == "train" and a.dtype == "fp16":
        raise ValueError("train supports --dtype fp32 or bf16 (fp16 training needs a grad scaler); use --dtype bf16")
    if a.kind == "train" and a.warmup < 1:
        raise ValueError("train needs --warmup >= 1: the first step includes lazy optimizer-state allocation")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["startup"]:  # times whole processes, so it takes none of the model options below
        from gqa_sweep.bench.startup import main as startup_main

        return startup_main(argv[1:])
    if argv[:1] == ["peak"]:  # its own options: a peak per dtype, not a sweep over G
        from gqa_sweep.bench.peak import main as peak_main

        return peak_main(argv[1:])
    if argv[:1] == ["coord"]:  # activations vs width, sp and mup: no timing
        from gqa_sweep.bench.coord import main as coord_main

        return coord_main(argv[1:])
    a = build_parser().parse_args(argv)
    try:
        a = resolve(a)
        env = make_env(a.device, a.dtype)
        with warnings.catch_warnings():
            for message in ("does not have many workers", "but have no `val_dataloader`", "isinstance.treespec"):
                warnings.filterwarnings("ignore", message=f".*{message}.*")
            df, prof = BENCHES[a.kind](a, env)
    except ValueError as e:
        print(f"gqa-bench: error: {e}", file=sys.stderr)
        return 2
    variants = getattr(a, "attention", ["gqa"]) != ["gqa"]
    write_table(df, env, a.kind, a.out, TITLES[a.kind], NOTES[a.kind] + (f" {VARIANT_NOTE}" if variants else ""))
    if a.kind == "decode" and not variants:
        print(f"wrote {', '.join(map(str, write_roofline(df, env, a, a.out)))}")
    if a.kind == "serve":
        print(f"wrote {', '.join(map(str, write_plot(df, env, a, a.out)))}")
        print(f"MHA's max batch is the one of: {gqa_kv_command(df, a, env)}")
    if prof:
        (a.out / f"{a.kind}_profile.txt").write_text(prof)
        print(f"wrote {a.out / f'{a.kind}_profile.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MHA -> GQA checkpoint conversion (Ainslie et al. 2023, "GQA", arXiv 2305.13245 §2.1).

A model with G0 KV heads becomes one with G heads (G divides G0) by pooling each contiguous run of
G0/G source heads, so query head j ends up reading KV head j // (H/G) as `DecoderLM` expects:
  mean   - the mean of the group's K (and V) projection heads (the paper's choice; best after uptraining)
  first  - the group's first head
  random - fresh weights drawn with the model's init_std (the paper's "from scratch" baseline for K/V)
Only k_proj/v_proj change; Q, O, MLP, norms, embeddings and lm_head are copied exactly. RoPE rotates
every K head by the same position-dependent matrix, so mean-pooling the projection weights is the same
as mean-pooling the keys themselves.

CLI: gqa-convert CHECKPOINT --groups G [--method mean|first|random] --out PATH [--seed S]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from gqa_sweep.model.shape import divisors
from gqa_sweep.model.transformer import DecoderLM
from gqa_sweep.train.checkpoint import CheckpointError, load_model, save_model

METHODS = ("mean", "first", "random")
SERVED_KV_DTYPE = "bf16/fp16"  # the KV size reported when the run's precision is unknown: 2 bytes, as served


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def check_groups(model: DecoderLM, groups: int | list[int]) -> list[int]:
    """G must divide the source's KV-head count G0 (per layer): each new head pools a contiguous run of G0/G
    heads. `groups` is one G for every layer or a list with one G per layer; returns the per-layer list."""
    cfg = model.cfg
    if cfg.attention != "gqa":  # pooling K/V heads is defined for grouped-query attention only
        raise ValueError(f"only attention=gqa checkpoints convert to fewer KV heads (this one is attention="
                         f"{cfg.attention}); train the GTA / MLA model from scratch (init.method=scratch)")  # fmt: skip
    per_layer = groups if isinstance(groups, list) else [groups] * cfg.n_layers
    if len(per_layer) != cfg.n_layers:
        raise ValueError(f"groups={groups} has {len(per_layer)} entries but the checkpoint has {cfg.n_layers} layers; "
                         "give one G per layer")  # fmt: skip
    for layer, (g, G0) in enumerate(zip(per_layer, cfg.kv_heads_per_layer)):
        name = f"groups[{layer}]" if isinstance(groups, list) else "groups"
        where = f"layer {layer}: " if isinstance(groups, list) else ""
        choose = f"choose {name} from {', '.join(map(str, divisors(G0)))}"
        if not isinstance(g, int) or isinstance(g, bool) or g <= 0:
            raise ValueError(f"{where}{name}={g!r} must be a positive integer; {choose}")
        if G0 % g:
            raise ValueError(
                f"{where}{name}={g} does not divide the checkpoint's {G0} KV heads (n_heads={cfg.n_heads}); {choose}"
            )
    return per_layer


def pool_heads(weight: torch.Tensor, groups: int, d_head: int, method: str) -> torch.Tensor:
    """Pool a (G0*d_head, d_model) K or V projection to (groups*d_head, d_model) by contiguous runs."""
    heads = weight.reshape(groups, -1, d_head, weight.shape[-1])  # (G, G0/G, d_head, d_model)
    if method == "first":
        return heads[:, 0].reshape(-1, weight.shape[-1])
    # Average in fp32: bf16 sums over many heads lose low bits.
    return heads.float().mean(dim=1).to(weight.dtype).reshape(-1, weight.shape[-1])


def convert_model(model: DecoderLM, groups: int | list[int], method: str, seed: int = 0) -> DecoderLM:
    """A new DecoderLM with `groups` KV heads (or groups[l] in layer l) whose K/V projections are built from
    `model`'s by `method`."""
    check_method(method)
    per_layer = check_groups(model, groups)
    cfg = model.cfg
    ref = model.embed.weight
    state = model.state_dict()
    gen = torch.Generator().manual_seed(seed)
    for i, g in enumerate(per_layer):
        for proj in ("k_proj", "v_proj"):
            key = f"layers.{i}.attn.{proj}.weight"
            w = state[key]
            if method == "random":
                shape = (g * cfg.d_head, w.shape[1])
                state[key] = (torch.randn(shape, generator=gen) * cfg.init_std).to(w.dtype)
            else:
                state[key] = pool_heads(w, g, cfg.d_head, method)
    # Building a DecoderLM draws its init from the global RNG; the caller's stream should not move.
    with torch.random.fork_rng(devices=[]):
        new = DecoderLM(replace(cfg, n_kv_heads=groups))
    new.to(device=ref.device, dtype=ref.dtype)
    new.load_state_dict(state)
    return new.train(model.training)


def load_source(path: str | Path) -> tuple[DecoderLM, dict]:
    """A DecoderLM from our model.pt, a Lightning .ckpt of LMModule, or an HF Llama-family directory."""
    path = Path(path)
    if not path.is_dir():
        return load_model(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{str(path)!r} is a directory without config.json; pass a model.pt, a Lightning .ckpt "
            "or a Hugging Face Llama checkpoint directory (config.json + *.safetensors)"
        )
    from gqa_sweep.hf.export import load_hf_dir  # lazily: transformers is a dev extra and slow to import

    try:
        return load_hf_dir(path), {}
    except (ImportError, OSError) as e:  # no transformers; config.json without (readable) weights
        reason = " ".join(str(e).split())  # transformers' messages span lines; ours is one
        raise CheckpointError(f"cannot load Hugging Face checkpoint {str(path)!r}: {reason}") from e


def convert_file(
    path: str | Path, groups: int, method: str, out: str | Path, seed: int = 0
) -> tuple[Path, DecoderLM, DecoderLM]:
    """Load, convert and save; returns (out path, source model, converted model)."""
    check_method(method)
    path, out = Path(path), Path(out)
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a directory; pass a file path such as {str(out / 'model.pt')!r}")
    if out.exists() and path.exists() and out.resolve() == path.resolve():
        raise ValueError(f"--out {str(out)!r} is the source checkpoint; choose a different output path")
    src, _ = load_source(path)
    new = convert_model(src, groups, method, seed)
    meta = {
        "converted_from": str(path),
        "method": method,
        "groups": groups,
        "source_n_kv_heads": src.cfg.n_kv_heads,
        "seed": seed if method == "random" else None,
    }
    return save_model(new, out, meta), src, new


def convert_checkpoint(path: str | Path, groups: int, method: str, out: str | Path, seed: int = 0) -> Path:
    """Convert the checkpoint at `path` to `groups` KV heads and save it with `save_model` at `out`."""
    return convert_file(path, groups, method, out, seed)[0]


def run_kv_dtype(checkpoint: str | Path) -> tuple[str, int]:
    """The KV dtype the sweep's table uses for this checkpoint's run (its config.yaml's trainer.precision:
    bf16 / fp16 under mixed precision, else fp32) and its bytes; bf16/fp16 (2 bytes) when there is no run
    config beside the checkpoint."""
    from omegaconf import OmegaConf

    run_cfg = Path(checkpoint).parent / "config.yaml"
    precision = OmegaConf.select(OmegaConf.load(run_cfg), "trainer.precision") if run_cfg.is_file() else None
    if precision is None:
        return SERVED_KV_DTYPE, 2
    p = str(precision)
    return ("bf16", 2) if p.startswith("bf16") else ("fp16", 2) if p.startswith("16") else ("fp32", 4)


def summary(src: DecoderLM, new: DecoderLM, method: str, out: Path, kv_dtype: tuple[str, int]) -> str:
    c0, c1 = src.cfg, new.cfg
    name, nbytes = kv_dtype
    return (
        f"H={c0.n_heads}, G {c0.kv_layout if not c0.uniform else c0.n_kv_heads} -> "
        f"{c1.kv_layout if not c1.uniform else c1.n_kv_heads} ({method}): "
        f"params {src.num_params():,} -> {new.num_params():,}, "
        f"KV bytes/token ({name}) {c0.kv_bytes_per_token(nbytes):,} -> {c1.kv_bytes_per_token(nbytes):,}; "
        f"wrote {out}"
    )


def _groups(text: str) -> int | list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give G (e.g. 2) or one G per layer (e.g. 4,2,1,1)") from None
    return values[0] if len(values) == 1 else values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="gqa-convert",
        description="Convert an MHA (or GQA) checkpoint to G KV heads by pooling contiguous head groups "
        "(Ainslie et al. 2023). Uptrain the result briefly to recover quality.",
    )
    p.add_argument("checkpoint", help="model.pt, Lightning .ckpt, or Hugging Face Llama directory")
    p.add_argument("--groups", "-g", type=_groups, required=True,
                   help="KV heads G of the new model (divides the source's), or one G per layer: 4,2,1,1")  # fmt: skip
    p.add_argument("--method", default="mean", metavar="{" + ",".join(METHODS) + "}", help="default: mean")
    p.add_argument("--out", "-o", required=True, help="output model.pt")
    p.add_argument("--seed", type=int, default=0, help="seed for --method random")
    args = p.parse_args(argv)
    try:
        out, src, new = convert_file(args.checkpoint, args.groups, args.method, args.out, args.seed)
    except ValueError as e:  # CheckpointError included: every bad input is a usage error
        print(f"gqa-convert: error: {e}", file=sys.stderr)
        return 2
    print(summary(src, new, args.method, out, run_kv_dtype(args.checkpoint)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

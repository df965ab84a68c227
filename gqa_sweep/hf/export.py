"""Convert between DecoderLM and transformers' `LlamaForCausalLM` / `Qwen3ForCausalLM`; `gqa-export`.

Our block is HF Llama's (pre-RMSNorm, half-rotation RoPE, SwiGLU, no biases, query head j reading KV head
j // (H // G) as `repeat_kv` does), so conversion only renames weights: no permutation, no rounding.
A model with qk_norm is Qwen3's block (Llama's plus an RMSNorm over each head's q and k before RoPE, one
d_head gain shared by the heads): it exports to `Qwen3ForCausalLM`. An MLA model exports to a dense
`DeepseekV3ForCausalLM` (first_k_dense_replace = every layer: no experts; rope_interleave=False, our half-split
RoPE over d_R dims; latent norms at its hard-coded eps 1e-6, as ours). GTA has no HF class: it refuses. Every
other model exports to Llama.
transformers is an optional dependency, imported inside the functions that need it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from gqa_sweep.model.shape import ModelConfig, build_shape
from gqa_sweep.model.transformer import DecoderLM

if TYPE_CHECKING:
    from transformers import LlamaConfig, PretrainedConfig, PreTrainedModel, Qwen3Config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Our per-layer module names -> HF Llama's.
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn.q_proj": "self_attn.q_proj",
    "attn.k_proj": "self_attn.k_proj",
    "attn.v_proj": "self_attn.v_proj",
    "attn.o_proj": "self_attn.o_proj",
    "attn.q_norm": "self_attn.q_norm",  # qk_norm models (Qwen3)
    "attn.k_norm": "self_attn.k_norm",
    "attn.q_a_proj": "self_attn.q_a_proj",  # MLA (DeepseekV3Attention)
    "attn.q_a_norm": "self_attn.q_a_layernorm",
    "attn.q_b_proj": "self_attn.q_b_proj",
    "attn.kv_a_proj": "self_attn.kv_a_proj_with_mqa",
    "attn.kv_a_norm": "self_attn.kv_a_layernorm",
    "attn.kv_b_proj": "self_attn.kv_b_proj",
    "mlp_norm": "post_attention_layernorm",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
}
_TOP_NAMES = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError("HF export needs transformers: pip install transformers") from e
    return transformers


def hf_key(name: str) -> str:
    """HF Llama state-dict key of one of our parameter names ("layers.0.attn.q_proj.weight", ...)."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    if name == "lm_head.weight":
        return name
    _, i, rest = name.split(".", 2)
    return f"model.layers.{i}.{_LAYER_NAMES[rest.removesuffix('.weight')]}.weight"


def hf_config(cfg: ModelConfig) -> LlamaConfig | Qwen3Config:
    """The HF config of our model: DeepseekV3Config for MLA, Qwen3Config with qk_norm, else LlamaConfig."""
    if cfg.attention == "gta":
        raise ValueError("a GTA model (attention=gta) cannot be exported: transformers has no grouped-tied attention "
                         "class; keep it as a gqa-sweep model.pt")  # fmt: skip
    if cfg.parametrization == "mup":  # its logit multiplier and 1/d_head attention scale have no HF config field
        raise ValueError("a muP model (parametrization=mup) cannot be exported: HF Llama has no output multiplier "
                         "or attention scale; keep it as a gqa-sweep model.pt")  # fmt: skip
    if cfg.attention == "mla":
        return _deepseek_config(cfg)
    if not cfg.uniform:
        raise ValueError(
            f"per-layer KV heads (n_kv_heads={cfg.kv_layout}) cannot be exported: Hugging Face Llama and Qwen3 have "
            "a single num_key_value_heads for every layer; convert to one G first (gqa-convert --groups G)"
        )
    common = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.d_head,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,  # Qwen3 uses it for q_norm / k_norm too, as we do
        "rope_theta": cfg.rope_theta,  # transformers 5 moves it into rope_parameters itself
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        # Our models have no special tokens; Llama's defaults (bos=1, eos=2) would stop HF generate early.
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }
    if cfg.qk_norm:  # Qwen3 has no MLP-bias switch (never biased) and, with use_sliding_window off, full attention
        return _transformers().Qwen3Config(**common, use_sliding_window=False)
    if cfg.d_model % cfg.n_heads:
        # LlamaConfig rejects this even when head_dim is given.
        raise ValueError(
            f"HF Llama needs d_model divisible by n_heads (got d_model={cfg.d_model}, n_heads={cfg.n_heads}, "
            f"d_head={cfg.d_head}); only models with d_model % n_heads == 0 can be exported"
        )
    return _transformers().LlamaConfig(**common, mlp_bias=False)


def _deepseek_config(cfg: ModelConfig):
    """A dense DeepseekV3Config: every layer below first_k_dense_replace is a plain SwiGLU MLP, so no experts."""
    return _transformers().DeepseekV3Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers, first_k_dense_replace=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,  # each head its own expanded K/V
        kv_lora_rank=cfg.kv_lora_rank, q_lora_rank=cfg.q_lora_rank, qk_rope_head_dim=cfg.rope_dim,
        qk_nope_head_dim=cfg.qk_nope_dim, v_head_dim=cfg.v_dim, rope_interleave=False,
        hidden_act="silu", max_position_embeddings=cfg.block_size, initializer_range=cfg.init_std,
        rms_norm_eps=cfg.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, attention_dropout=0.0,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip


def to_hf(model: DecoderLM) -> PreTrainedModel:
    """A `LlamaForCausalLM` (`Qwen3ForCausalLM` with qk_norm; eval mode, same device and dtype), same logits."""
    transformers = _transformers()
    p = model.embed.weight
    # from_config builds under `dtype`, so HF's fp32 RoPE frequencies stay fp32 (a later .to() would cast them).
    hf = transformers.AutoModelForCausalLM.from_config(hf_config(model.cfg), dtype=p.dtype)
    hf.load_state_dict({hf_key(k): v for k, v in model.state_dict().items()}, strict=True)
    return hf.to(p.device).eval()


def _rope_theta(c) -> float:
    """rope_theta of a LlamaConfig; ValueError for any RoPE variant our model does not implement."""
    # transformers 5 keeps RoPE settings in `rope_parameters`; 4.x in `rope_theta` + `rope_scaling`.
    params = dict(getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"RoPE scaling rope_type={rope_type!r} is not supported (only plain RoPE, 'default')")
    partial = params.get("partial_rotary_factor", getattr(c, "partial_rotary_factor", None))
    if partial not in (None, 1, 1.0):
        raise ValueError(f"partial_rotary_factor={partial} is not supported (RoPE must cover the whole head)")
    return float(params.get("rope_theta", getattr(c, "rope_theta", 10000.0)))


def model_config_from_hf(c: PretrainedConfig) -> ModelConfig:
    """Our ModelConfig for an HF Llama, Qwen3 or dense DeepseekV3 config; ValueError naming what differs from our
    architecture."""
    dense_mla = getattr(c, "model_type", None) == "deepseek_v3"
    return build_shape(_deepseek_fields(c) if dense_mla else _llama_fields(c))


def _llama_fields(c: PretrainedConfig) -> dict:
    """ModelConfig's fields of an HF Llama or Qwen3 config; ValueError naming what we do not implement."""
    problems = []
    model_type = getattr(c, "model_type", None)
    if model_type not in ("llama", "qwen3"):
        problems.append(f"model_type={model_type!r} (only 'llama', or 'qwen3' for qk_norm)")
    if getattr(c, "use_sliding_window", False):
        problems.append("use_sliding_window=True (our attention is full causal attention)")
    if getattr(c, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={c.hidden_act!r} (only 'silu', SwiGLU)")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(c, flag, False):
            problems.append(f"{flag}=True (our model has no biases)")
    if getattr(c, "attention_dropout", 0.0):
        problems.append(f"attention_dropout={c.attention_dropout} (our model has no dropout)")
    try:
        theta = _rope_theta(c)
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise ValueError(f"unsupported {'Qwen3' if model_type == 'qwen3' else 'Llama'} config for DecoderLM: "
                         + "; ".join(problems))
    return dict(
        vocab_size=c.vocab_size,
        block_size=c.max_position_embeddings,
        n_layers=c.num_hidden_layers,
        d_model=c.hidden_size,
        n_heads=c.num_attention_heads,
        n_kv_heads=c.num_key_value_heads or c.num_attention_heads,
        d_head=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        d_ff=c.intermediate_size,
        rope_theta=theta,
        norm_eps=c.rms_norm_eps,
        tie_embeddings=bool(c.tie_word_embeddings),
        init_std=c.initializer_range,
        qk_norm=model_type == "qwen3",
    )


def _deepseek_fields(c: PretrainedConfig) -> dict:
    """ModelConfig's fields (MLA) of a dense DeepseekV3Config; ValueError naming what our MLA does not implement."""
    problems = []
    if (c.first_k_dense_replace or 0) < c.num_hidden_layers:
        problems.append(f"first_k_dense_replace={c.first_k_dense_replace} < num_hidden_layers={c.num_hidden_layers} "
                        "(mixture-of-experts layers; only dense models)")  # fmt: skip
    if c.rope_interleave:
        problems.append("rope_interleave=True (our RoPE is half-split: rope_interleave=False)")
    if c.num_key_value_heads != c.num_attention_heads:
        problems.append(f"num_key_value_heads={c.num_key_value_heads} != num_attention_heads")
    if getattr(c, "hidden_act", "silu") != "silu" or c.attention_bias or c.attention_dropout:
        problems.append("hidden_act other than silu, attention_bias or attention_dropout")
    try:
        theta = _rope_theta(c)
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise ValueError("unsupported DeepseekV3 config for DecoderLM: " + "; ".join(problems))
    return dict(
        vocab_size=c.vocab_size, block_size=c.max_position_embeddings, n_layers=c.num_hidden_layers,
        d_model=c.hidden_size, n_heads=c.num_attention_heads, n_kv_heads=c.num_attention_heads,
        d_head=None if c.hidden_size % c.num_attention_heads == 0 and c.hidden_size // c.num_attention_heads % 2 == 0
        else c.qk_nope_head_dim + c.qk_nope_head_dim % 2,  # only MLA's defaults and its MHA twin use d_head
        d_ff=c.intermediate_size,
        rope_theta=theta, norm_eps=c.rms_norm_eps, tie_embeddings=bool(c.tie_word_embeddings),
        init_std=c.initializer_range, attention="mla", rope_dim=c.qk_rope_head_dim, kv_lora_rank=c.kv_lora_rank,
        q_lora_rank=c.q_lora_rank, qk_nope_dim=c.qk_nope_head_dim, v_dim=c.v_head_dim,
    )  # fmt: skip


def from_hf(llama_model: PreTrainedModel) -> DecoderLM:
    """A DecoderLM (eval mode, same device and dtype) with the weights of an HF `Llama/Qwen3ForCausalLM`."""
    if not hasattr(llama_model, "lm_head") or not hasattr(llama_model, "config"):
        raise ValueError(
            f"expected a transformers LlamaForCausalLM or Qwen3ForCausalLM, got {type(llama_model).__name__}"
        )
    cfg = model_config_from_hf(llama_model.config)
    state = llama_model.state_dict()
    p = llama_model.get_input_embeddings().weight
    model = DecoderLM(cfg).to(device=p.device, dtype=p.dtype)
    ours = model.state_dict()
    extra = set(state) - {hf_key(k) for k in ours}
    if extra:
        raise ValueError(f"HF weights with no place in DecoderLM: {', '.join(sorted(extra)[:5])}")
    model.load_state_dict({k: state[hf_key(k)] for k in ours}, strict=True)
    return model.eval()


def load_hf_dir(path: str | Path) -> DecoderLM:
    """from_hf of a local HF Llama or Qwen3 directory (config.json + weights); never touches the network."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a Hugging Face model directory (no config.json)")
    transformers = _transformers()
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    model_config_from_hf(config)  # fail on an unsupported config before reading any weights
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, config=config, local_files_only=True)
    return from_hf(hf)


# A model trained on one stream without document delimiters (a single text file, tiny Shakespeare: data.delimiter
# auto leaves them out) never saw an end-of-text token, so there is none to declare and generation stops only at
# max_new_tokens. Said on export, with the change that gives one.
NO_EOS_NOTE = ("(no eos: the run trained on one stream without document delimiters, e.g. a single text file, so "
               "generate() runs to max_new_tokens; a corpus of documents (a directory or .jsonl) gives an "
               "end-of-text token)")


def export_delimiter(hf: PreTrainedModel, run_tokenizer: Path) -> str | None:
    """Declare the run's document delimiter as the model's eos and bos (config and generation config).

    The delimiter (an end-of-text token after each training document, or a BOS before it) is the token a
    document starts after: it is what lm-eval-harness prefixes a context with (its `prefix_token_id` is the
    tokenizer's bos, else its eos) and where generation should stop.
    """
    from gqa_sweep.data.tokenizer_export import delimiter_token_of

    token = delimiter_token_of(run_tokenizer)
    if token is None:
        return None
    from tokenizers import Tokenizer

    token_id = Tokenizer.from_file(str(run_tokenizer)).token_to_id(token)
    for c in (hf.config, getattr(hf, "generation_config", None)):
        if c is None:
            continue
        c.eos_token_id = c.bos_token_id = token_id
    return token


def export_main(argv: list[str] | None = None) -> int:
    """`gqa-export RUN_DIR|CHECKPOINT OUT_DIR [--dtype fp32|bf16|fp16]`: write an HF Llama (or Qwen3) directory."""
    from gqa_sweep.train.checkpoint import load_model

    parser = argparse.ArgumentParser(
        prog="gqa-export",
        description="Export a gqa-sweep checkpoint (model.pt or Lightning .ckpt) to a Hugging Face Llama "
        "directory (Qwen3 for a qk_norm model; config.json + model.safetensors) that from_pretrained loads.",
    )
    parser.add_argument("checkpoint", help="a run directory (results/runs/<run_id>, its model.pt is read), or a "
                        "model.pt or Lightning .ckpt of a gqa-sweep model")  # fmt: skip
    parser.add_argument("out_dir", help="directory to write config.json and model.safetensors into")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="weight dtype (default fp32)")
    args = parser.parse_args(argv)
    if Path(args.checkpoint).is_dir():  # a run directory: its final weights (the tokenizer sits beside them)
        if not (Path(args.checkpoint) / "model.pt").is_file():
            print(f"gqa-export: error: {args.checkpoint} is a directory without model.pt; pass the run directory "
                  "(results/runs/<run_id>) of a completed run, or a model.pt / .ckpt", file=sys.stderr)
            return 2
        args.checkpoint = str(Path(args.checkpoint) / "model.pt")
    try:
        model, _ = load_model(args.checkpoint)
        hf = to_hf(model.to(DTYPES[args.dtype]))
    except (ValueError, TypeError, RuntimeError, KeyError, ImportError) as e:
        # One line on stderr: load_state_dict errors span many lines.
        print(f"gqa-export: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    transformers = _transformers()
    transformers.utils.logging.disable_progress_bar()  # keep the CLI's output to its one summary line
    out = Path(args.out_dir)
    run_tokenizer = Path(args.checkpoint).parent / "tokenizer.json"  # written by each run next to model.pt
    delim = export_delimiter(hf, run_tokenizer) if run_tokenizer.is_file() else None
    hf.save_pretrained(out, safe_serialization=True)
    if run_tokenizer.is_file():
        specials = {"eos_token": delim, "bos_token": delim} if delim else {}
        transformers.PreTrainedTokenizerFast(
            tokenizer_file=str(run_tokenizer), clean_up_tokenization_spaces=False, **specials  # our decode is exact
        ).save_pretrained(out)
        tokenizer_note = "tokenizer.json " + (f"(eos = bos = {delim})" if delim else NO_EOS_NOTE)
    else:
        tokenizer_note = f"no tokenizer (none at {run_tokenizer})"
    umask = os.umask(0)
    os.umask(umask)
    for f in out.iterdir():  # safetensors writes owner-only files: a shared model dir must be readable
        if f.is_file():
            f.chmod(0o666 & ~umask)
    cfg = model.cfg
    print(
        f"wrote {out / 'config.json'}, model.safetensors and {tokenizer_note}: {type(hf).__name__}, "
        f"{model.num_params():,} params, H={cfg.n_heads} G={cfg.n_kv_heads}, {args.dtype}"
    )
    return 0

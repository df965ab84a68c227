"""A run's config and every check on it, torch-free: bad input fails before torch and Lightning load.

The run's identity (normalised computation -> run_id_of, run_name), its model shape (model_shape) and
`validate`, which raises ConfigError naming the fix. The planner (gqa_sweep.plan, gqa_sweep.spec) resolves
Hydra's config once and calls these on the plain data.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

from hydra.errors import CompactHydraException
from hydra.utils import to_absolute_path

from gqa_sweep.model.shape import DECODE_MODES, ModelConfig, build_shape, divisors

# Keys that change where or how a run is reported, not what it computes: left out of the run's identity.
# The sweep is a label (a run reused by another sweep carries both; gqa_sweep.store.results' `sweeps` table).
IDENTITY_EXCLUDE = (
    "results_dir",
    "force",
    "logger",
    "sweep",
    "data.cache_dir",
    "data.num_workers",
    "data.allow_repeats",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.num_threads",
    "progress",
    "preview",
)
INIT_METHODS = ("scratch", "mean", "first", "random")


# Model keys added after runs were stored, with the value every earlier run implicitly had: run_id_of drops a
# key whose value is its default, so the existing runs keep their ids.
IDENTITY_DEFAULTS = {
    "metrics.decode_mode": "auto",
    "metrics.decode_cache_bound": "auto",
    "model.attention": "gqa",
    "model.rope_dim": None,
    "model.kv_lora_rank": None,
    "model.q_lora_rank": None,
    "model.qk_nope_dim": None,
    "model.v_dim": None,
    "model.parametrization": "sp",
    "model.mup_base_width": None,
    "model.mup_base_d_head": None,
}


class ConfigError(CompactHydraException, ValueError):
    """Bad input, reported in one line before any training (Hydra prints compact errors as-is)."""


def normalised(cfg: dict) -> dict:
    """The same computation spelled one way, so it gets one run id and one name: a setting that changes
    nothing is written as its default. `model.param_match=ffn` where the matched FFN is the plain one (G = H),
    an explicit d_head or d_ff equal to the default, a per-layer G list of one value. An invalid model is left
    as given (validate reports it). `trainer.precision` must already be resolved (gqa_sweep.plan)."""
    cfg = copy.deepcopy(cfg)
    m = cfg["model"]
    try:
        plain = model_shape({**cfg, "model": {**m, "param_match": "none"}})
        used = model_shape(cfg)
        default = replace(plain, d_head=None, d_ff=None)
    except (ValueError, TypeError):
        return cfg
    if m.get("param_match", "none") != "none" and used.d_ff == plain.d_ff:
        m["param_match"] = "none"
    if m.get("d_head") is not None and m["d_head"] == default.d_head and m["d_model"] % m["n_heads"] == 0:
        m["d_head"] = None
    if m.get("d_ff") is not None and m["d_ff"] == default.d_ff:
        m["d_ff"] = None
    # G as the model reads it (ModelConfig normalises it): a per-layer list of one G is that G; MLA has no G,
    # so any n_kv_heads is the same computation (n_heads).
    m["n_kv_heads"] = plain.n_kv_heads
    return cfg


def run_id_of(cfg: dict) -> str:
    """A hash of the run's computation: its resolved, normalised config minus output, logging and sweep
    labels. The same computation, the same id, whichever sweep asks for it."""
    return hashlib.sha256(json.dumps(identity(cfg), sort_keys=True, default=str).encode()).hexdigest()[:12]


def identity(cfg: dict) -> dict:
    """What run_id_of hashes: the config minus IDENTITY_EXCLUDE, with later keys at their default dropped."""
    ident = copy.deepcopy(cfg)
    for key, default in IDENTITY_DEFAULTS.items():  # a key added later, at its default: the id it had before
        *parents, leaf = key.split(".")
        node = ident
        for p in parents:
            node = node.get(p, {})
        if leaf in node and node[leaf] == default:
            node.pop(leaf)
    for key in IDENTITY_EXCLUDE:
        *parents, leaf = key.split(".")
        node = ident
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return ident


def run_name(cfg: dict) -> str:
    m = cfg["model"]
    G = m["n_kv_heads"]
    if isinstance(G, list):  # a per-layer layout: H8-G4.2.1.1-s0 (a list of one G is that G)
        G = G[0] if len(set(G)) == 1 else ".".join(map(str, G))
    attention = m.get("attention", "gqa")
    if attention == "mla":  # no G: the latent's size names it (kv_lora_rank, default 4 d_head)
        d_head = m.get("d_head") or m["d_model"] // m["n_heads"]
        name = f"H{m['n_heads']}-MLA{m.get('kv_lora_rank') or 4 * d_head}-s{cfg['seed']}"
    else:
        name = f"H{m['n_heads']}-G{G}-s{cfg['seed']}" + ("-gta" if attention == "gta" else "")
    if m.get("d_head") is not None:  # a head size other than d_model / H
        name += f"-dh{m['d_head']}"
    if str(m.get("name", "")).startswith("ladder-"):  # a ladder's sizes share H, G and d_head: H4-G1-s0-dh16-ladder-s3
        name += f"-{m['name']}"
    if m.get("parametrization", "sp") != "sp":
        name += f"-{m['parametrization']}"
    if m.get("qk_norm"):
        name += "-qknorm"
    if m.get("param_match", "none") != "none":
        name += f"-match{m['param_match']}"
    if cfg["optim"].get("z_loss"):
        name += f"-z{cfg['optim']['z_loss']:g}"
    if cfg["init"]["method"] != "scratch" or cfg["init"].get("alpha") is not None:
        name += f"-{cfg['init']['method']}"
    if cfg["init"].get("alpha") is not None:
        name += f"-a{cfg['init']['alpha']}"
    return name


def identify(cfg: dict) -> tuple[dict, str, str, ModelConfig]:
    """A checked config's identity: (its normalised computation, run id, run name, model shape)."""
    computation = normalised(cfg)
    return computation, run_id_of(computation), run_name(computation), model_shape(computation)


def model_shape(cfg: dict) -> ModelConfig:
    """The run's model shape, its vocabulary left to the data; `param_match=ffn` resolves to the matched d_ff."""
    return build_shape(cfg["model"])


def validate(cfg: dict) -> None:
    """Every check of the (resolved) config itself: raise ConfigError naming the fix. The data's torch-free
    checks and the store's are added by gqa_sweep.plan.check_inputs, which is what the sweep and the run call."""
    m = cfg["model"]
    if str(m["n_kv_heads"]) == "all":
        raise ConfigError(
            f"model.n_kv_heads=all expands to a sweep over {', '.join(map(str, divisors(int(m['n_heads']))))}; "
            "run it with -m (gqa-sweep -m model.n_kv_heads=all)"
        )
    try:
        model_shape(cfg)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model: {e}") from None
    lr = cfg["optim"]["lr"]
    if lr == "transfer":  # resolved by the planner from a stored grid (gqa_sweep/scaling/lr_transfer.py)
        if m.get("parametrization", "sp") != "mup" or not m.get("mup_base_width"):
            raise ConfigError("optim.lr=transfer takes the best lr of a grid at muP's base width: it needs "
                              "model.parametrization=mup and model.mup_base_width (under sp the best lr moves with "
                              "width: docs/mup.md); or give a number, e.g. optim.lr=3e-3")  # fmt: skip
    elif not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"optim.lr={lr} must be a finite positive number (or `transfer` under muP), "
                          "e.g. optim.lr=3e-3")  # fmt: skip
    z = cfg["optim"].get("z_loss", 0.0)
    if not isinstance(z, (int, float)) or not math.isfinite(z) or z < 0:
        raise ConfigError(f"optim.z_loss={z} must be a finite number >= 0 (0 turns it off), e.g. optim.z_loss=1e-4")
    steps = cfg["trainer"]["max_steps"]
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise ConfigError(f"trainer.max_steps={steps} must be a positive integer")
    validate_decode(cfg["metrics"], cfg["trainer"].get("accelerator", "auto"))
    validate_init(cfg["init"], m.get("attention", "gqa"))
    if cfg.get("progress", "auto") not in ("auto", "bar", "lines"):
        raise ConfigError(f"progress={cfg['progress']!r}; choose progress=auto, progress=bar or progress=lines")
    if cfg["logger"]["kind"] not in ("none", "csv", "wandb"):
        raise ConfigError(f"logger.kind={cfg['logger']['kind']!r}; choose logger=none, logger=csv or logger=wandb")


def validate_init(init: dict, attention: str) -> None:
    method, checkpoint, alpha = init["method"], init.get("checkpoint"), init.get("alpha")
    if method != "scratch" and attention != "gqa":
        raise ConfigError(f"init.method={method} converts MHA K/V heads to GQA; model.attention="
                          f"{attention} trains from scratch: drop init.method or use model.attention=gqa")
    if method not in INIT_METHODS:
        raise ConfigError(f"init.method={method!r}; choose from {', '.join(INIT_METHODS)}")
    if method != "scratch" and checkpoint is None and not init.get("parent_steps"):
        raise ConfigError(f"init.method={method} needs init.checkpoint=PATH or init.parent_steps=S")
    if checkpoint is not None and method == "scratch":
        raise ConfigError("init.checkpoint is converted, not trained from scratch; add init.method=mean|first|random")
    if checkpoint is not None and not Path(to_absolute_path(checkpoint)).exists():
        raise ConfigError(f"init.checkpoint={checkpoint} does not exist; pass a model.pt, .ckpt or HF Llama dir")
    if alpha is not None and (not init.get("parent_steps") or alpha < 0):
        raise ConfigError("init.alpha needs init.parent_steps=S (steps of the MHA parent) and alpha >= 0")


def validate_decode(m: dict, accelerator: str = "auto") -> None:
    for key in ("decode_batch", "decode_prompt_tokens", "decode_new_tokens"):
        if not isinstance(m[key], int) or m[key] < 1:
            raise ConfigError(f"metrics.{key}={m[key]} must be a positive integer")
    if m.get("decode_fill_cache", False) not in (True, False):
        raise ConfigError(f"metrics.decode_fill_cache={m['decode_fill_cache']} must be true or false")
    validate_decode_mode(m, accelerator)


def validate_decode_mode(m: dict, accelerator: str = "auto") -> None:
    """The per-run decode's step (gqa_sweep/model/decode.py) and whether it is measured where the cache matters."""
    mode = m.get("decode_mode", "auto")
    if mode not in DECODE_MODES:
        raise ConfigError(f"metrics.decode_mode={mode} must be one of {', '.join(DECODE_MODES)} (auto: graph on "
                          "CUDA, eager on the CPU)")  # fmt: skip
    if mode == "graph" and accelerator == "cpu":  # a CUDA graph needs CUDA: say so before training, not after
        raise ConfigError("metrics.decode_mode=graph captures a CUDA graph, but trainer.accelerator=cpu; use "
                          "metrics.decode_mode=auto or eager on the CPU, or trainer=gpu")  # fmt: skip
    bound = m.get("decode_cache_bound", "auto")
    if bound not in ("auto", True, False):
        raise ConfigError(f"metrics.decode_cache_bound={bound} must be auto (on CUDA), true or false")

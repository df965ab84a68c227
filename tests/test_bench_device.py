"""Everything a bench allocates is born on its device: random caches, tokens and inputs come from a generator on
that device, drawn there; models are built there in the bench dtype (checked on meta, where any host tensor shows)."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from gqa_sweep.bench.attention import attention_inputs, decode_attention_fns
from gqa_sweep.bench.common import Env, build_model, first_tokens, random_cache
from gqa_sweep.bench.decode import hf_copy
from gqa_sweep.bench.steps import static_fn
from gqa_sweep.model.shape import ModelConfig
from gqa_sweep.model.transformer import DecoderLM

FACTORY_DRAWS = {torch.randn, torch.rand, torch.randint, torch.randn_like, torch.rand_like, torch.normal}
IN_PLACE_DRAWS = {"normal_", "uniform_", "random_", "bernoulli_", "exponential_"}
CFG = ModelConfig(vocab_size=64, block_size=24, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2)


class Draws(TorchFunctionMode):
    """Every random draw: (op, its generator's device or None, the device asked for or None, where it landed)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, object, object]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if func in FACTORY_DRAWS or name in IN_PLACE_DRAWS:
            g = kwargs.get("generator")
            where = out.device if func in FACTORY_DRAWS else args[0].device
            named = kwargs.get("device") if func in FACTORY_DRAWS else args[0].device  # asked for, not defaulted
            named = torch.device(named) if named else None
            self.seen.append((name, None if g is None else g.device, named, where))
        return out


class HostTensors(TorchDispatchMode):
    """Every op output that lands on the host (CPU), by op name."""

    def __init__(self) -> None:
        super().__init__()
        self.host: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dim() > 0:
                self.host.append(str(func))
        return out


def env_on(device: str, dtype: str = "fp32") -> Env:
    return Env(torch.device(device), dtype, device, torch.__version__, "2026-01-01")


def test_caches_tokens_and_inputs_come_from_a_generator_on_the_bench_device() -> None:
    env = env_on("cpu")
    model = DecoderLM(CFG).eval()
    with Draws() as draws:
        cache = random_cache(model, 2, 10, seed=0)
        first_tokens(CFG, 2, seed=0, device=env.device)
        attention_inputs(2, 8, 4, 2, 8, env, seed=0)
        decode_attention_fns(2, 4, 2, 10, 8, env, seed=0)
    assert len(draws.seen) == len(cache.buffers()) + 1 + 4 + 3  # cache buffers, tokens, q k v dy, q k v
    for name, g_device, named, where in draws.seen:
        # A generator on the device, asked for that device, and the tensor born there: no host draw then a copy.
        assert g_device == named == where == env.device, (name, g_device, named, where)
    assert cache.length == 10 and all(b[:, :, 10:].abs().sum() == 0 and b[:, :, :10].std() > 0.5
                                      for b in cache.buffers())  # fmt: skip


def test_the_draw_check_catches_a_host_draw_copied_to_the_device() -> None:
    with Draws() as draws:  # the pattern the benches used before: draw on the host, then .to(device)
        torch.randn((2, 3), generator=torch.Generator().manual_seed(0)).to("cpu")
    ((_, _, named, _),) = draws.seen
    assert named is None  # no device asked for: it would have been drawn on the host whatever the bench device


@pytest.mark.parametrize("attention", ["gqa", "gta", "mla"])
def test_models_are_built_on_the_device_in_the_bench_dtype_with_no_host_tensor(attention: str) -> None:
    cfg = ModelConfig(**{**CFG.to_dict(), "attention": attention, "n_kv_heads": 2})
    with HostTensors() as seen:
        model = build_model(cfg, env_on("meta", "bf16"), seed=0)
    assert seen.host == []  # shapes on meta, storage and init on the device: nothing built on the host
    tensors = list(model.parameters()) + list(model.buffers())
    assert {t.device.type for t in tensors} == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with HostTensors() as seen:
        hf = hf_copy(model) if attention == "gqa" else None
    assert seen.host == [] and (hf is None or {p.device.type for p in hf.parameters()} == {"meta"})


def test_built_model_matches_a_host_built_one_in_shape_and_init_statistics() -> None:
    model = build_model(CFG, env_on("cpu"), seed=0)
    ref = DecoderLM(CFG)
    assert [(n, p.shape) for n, p in model.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    torch.testing.assert_close(model.rope_cos, ref.rope_cos)
    torch.testing.assert_close(model.rope_sin, ref.rope_sin)
    assert torch.equal(model.layers[0].attn_norm.weight, torch.ones(32))
    q = model.layers[0].attn.q_proj.weight
    assert 0.015 < q.std() < 0.025 and not model.training  # init_std 0.02, eval mode
    assert torch.equal(build_model(CFG, env_on("cpu"), seed=0).lm_head.weight, model.lm_head.weight)  # seeded


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_a_cuda_bench_places_every_tensor_on_the_device() -> None:
    env = env_on("cuda", "bf16")
    with HostTensors() as seen, Draws() as draws:
        model = build_model(CFG, env, seed=0)
        cache = random_cache(model, 2, 10, seed=0)
        first = first_tokens(CFG, 2, seed=0, device=env.device)
        hf_copy(model)
        attention_inputs(2, 8, 4, 2, 8, env, seed=0)
        static_fn(model, cache, first, new_tokens=4)()
    assert seen.host == []
    assert all(g is None or g.type == "cuda" for _, g, _, _ in draws.seen)
    assert all(where.type == "cuda" for *_, where in draws.seen)

"""DecoderLM: grouped SDPA vs a plain-math reference, KV cache, no repeated K/V, config validation."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from gqa_sweep.model.attention import KVCache
from gqa_sweep.model.layers import RMSNorm
from gqa_sweep.model.shape import ModelConfig, divisors
from gqa_sweep.model.transformer import DecoderLM

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest

H = 8
GROUPS = divisors(H)  # 1 (MQA), 2, 4, 8 (MHA)
V, BLOCK = 61, 80



def tiny(G: int, n_heads: int = H, d_model: int = 64, std: float = 0.3, **kw) -> DecoderLM:
    """A 2-layer model with large random weights, so that logits (and greedy argmaxes) are well separated."""
    torch.manual_seed(1234 + G)
    cfg = ModelConfig(
        vocab_size=V, block_size=BLOCK, n_layers=2, d_model=d_model, n_heads=n_heads, n_kv_heads=G, **kw
    )
    model = DecoderLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0, std)
            else:
                p.uniform_(0.5, 1.5)  # non-trivial norm weights, so a dropped weight would show
    return model.eval()


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def assert_close_to_scale(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-5, what: str = "") -> None:
    """fp32 equality up to `tol` times the largest |b|: gradients sum many terms, so scale the tolerance."""
    torch.testing.assert_close(a, b, rtol=0, atol=tol * b.abs().max().item(), msg=lambda m: f"{what}: {m}")


# --- plain-math reference: written from the Llama equations, sharing only the weights -----------------


def ref_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Half-rotation RoPE: dims (i, i + D/2) rotate together by angle pos * theta^(-2i/D)."""
    T, D = x.shape[-2], x.shape[-1]
    ang = torch.arange(T, dtype=torch.float32)[:, None] * theta ** (-torch.arange(0, D, 2).float() / D)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat((x1 * ang.cos() - x2 * ang.sin(), x1 * ang.sin() + x2 * ang.cos()), dim=-1)


def ref_rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def ref_attention(attn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention with K/V repeated to H heads and an explicit softmax; returns (output, max |logit|)."""
    cfg = attn.cfg
    B, T, _ = x.shape
    Hq, G, D = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    q, k = (x @ attn.q_proj.weight.T).view(B, T, Hq, D), (x @ attn.k_proj.weight.T).view(B, T, G, D)
    if cfg.qk_norm:  # RMSNorm over each head's d_head, before RoPE
        q, k = ref_rms(q, attn.q_norm.weight, cfg.norm_eps), ref_rms(k, attn.k_norm.weight, cfg.norm_eps)
    q, k = ref_rope(q.transpose(1, 2), cfg.rope_theta), ref_rope(k.transpose(1, 2), cfg.rope_theta)
    v = (x @ attn.v_proj.weight.T).view(B, T, G, D).transpose(1, 2)
    k, v = k.repeat_interleave(Hq // G, dim=1), v.repeat_interleave(Hq // G, dim=1)  # head j -> KV head j // (H/G)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    y = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ v
    max_logit = scores.abs().masked_fill(~causal, 0).amax()
    return y.transpose(1, 2).reshape(B, T, Hq * D) @ attn.o_proj.weight.T, max_logit


def ref_forward(model: DecoderLM, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference logits and the largest |q.k|/sqrt(d_head) over layers."""
    eps = model.cfg.norm_eps
    x = model.embed.weight[idx]
    worst = torch.zeros(())
    for blk in model.layers:
        y, m = ref_attention(blk.attn, ref_rms(x, blk.attn_norm.weight, eps))
        x, worst = x + y, torch.maximum(worst, m)
        h = ref_rms(x, blk.mlp_norm.weight, eps)
        mlp = blk.mlp
        x = x + (F.silu(h @ mlp.gate_proj.weight.T) * (h @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
    return ref_rms(x, model.norm.weight, eps) @ model.lm_head.weight.T, worst


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("G", GROUPS)
def test_forward_and_param_grads_match_reference(G: int, tie: bool) -> None:
    model = tiny(G, std=0.1, tie_embeddings=tie).train()
    idx = tokens(2, 24)
    weight = torch.randn(2, 24, V, generator=torch.Generator().manual_seed(1))  # a loss touching every logit
    params = [p for _, p in model.named_parameters()]
    ours = model(idx)
    ours_grads = torch.autograd.grad((ours * weight).sum(), params)
    ref, _ = ref_forward(model, idx)
    ref_grads = torch.autograd.grad((ref * weight).sum(), params)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    for (name, _), a, b in zip(model.named_parameters(), ours_grads, ref_grads):
        assert_close_to_scale(a, b, what=f"grad of {name}")


@pytest.mark.parametrize("G", GROUPS)
def test_attention_output_and_input_grads_match_reference(G: int) -> None:
    model = tiny(G)
    attn, cos, sin = model.layers[0].attn, model.rope_cos[:20], model.rope_sin[:20]
    x = torch.randn(3, 20, 64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    params = [x, *attn.parameters()]
    ours = attn(x, cos, sin)
    ref, _ = ref_attention(attn, x)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, params, g), torch.autograd.grad(ref, params, g)):
        assert_close_to_scale(a, b, what="grad")


@pytest.mark.parametrize("G", GROUPS)
def test_max_attn_logit_equals_brute_force(G: int) -> None:
    model = tiny(G)
    idx = tokens(2, 30)
    _, expected = ref_forward(model, idx)
    assert model.max_attn_logit(idx) == pytest.approx(expected.item(), rel=1e-5)


def test_query_head_reads_kv_head_of_its_contiguous_group() -> None:
    # With G=2 and KV head 1's values zeroed, query heads 4-7 (j // 4 == 1) must output exactly zero.
    model = tiny(2)
    attn, D = model.layers[0].attn, model.cfg.d_head
    x = torch.randn(1, 6, 64)
    with torch.no_grad():
        attn.v_proj.weight[D:] = 0
        attn.o_proj.weight.copy_(torch.eye(64))  # output = concatenated head outputs
        heads = attn(x, model.rope_cos[:6], model.rope_sin[:6]).view(1, 6, H, D)
    assert heads[:, :, : H // 2].abs().amin(dim=-1).gt(0).all()
    assert torch.equal(heads[:, :, H // 2 :], torch.zeros_like(heads[:, :, H // 2 :]))


# --- qk_norm: per-head RMSNorm of q and k before RoPE (OLMo-2, Qwen3) -------------------------------------


@pytest.mark.parametrize("G", GROUPS)
def test_qk_norm_forward_grads_and_max_logit_match_reference(G: int) -> None:
    model = tiny(G, std=0.1, qk_norm=True).train()
    idx = tokens(2, 24)
    weight = torch.randn(2, 24, V, generator=torch.Generator().manual_seed(1))
    params = [p for _, p in model.named_parameters()]
    ours = model(idx)
    ref, ref_logit = ref_forward(model, idx)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    ours_grads = torch.autograd.grad((ours * weight).sum(), params)
    ref_grads = torch.autograd.grad((ref * weight).sum(), params)
    for (name, _), a, b in zip(model.named_parameters(), ours_grads, ref_grads):
        assert_close_to_scale(a, b, what=f"grad of {name}")
    assert model.max_attn_logit(idx) == pytest.approx(ref_logit.item(), rel=1e-5)


def test_qk_norm_has_one_d_head_gain_per_layer_for_q_and_k() -> None:
    plain, normed = tiny(2), tiny(2, qk_norm=True)
    extra = set(normed.state_dict()) - set(plain.state_dict())
    assert extra == {f"layers.{i}.attn.{n}_norm.weight" for i in range(2) for n in "qk"}
    assert normed.layers[0].attn.q_norm.weight.shape == (normed.cfg.d_head,)
    assert DecoderLM(normed.cfg).layers[1].attn.k_norm.weight.eq(1).all()  # initialised as gains of 1


@pytest.mark.parametrize("G", [1, 8])
def test_qk_norm_bounds_attention_logits_that_grow_without_it(G: int) -> None:
    # Scaling W_q and W_k by 10 scales a plain layer's logits by 100; normalised q and k do not see it, and
    # |q.k|/sqrt(D) <= sqrt(D) * max|g_q| * max|g_k| by Cauchy-Schwarz (RoPE keeps norms).
    for qk_norm in (False, True):
        model = tiny(G, qk_norm=qk_norm)
        attn, D = model.layers[0].attn, model.cfg.d_head
        x = model.layers[0].attn_norm(model.embed(tokens(2, 30)))
        before = attn.max_logit(x, model.rope_cos[:30], model.rope_sin[:30]).item()
        with torch.no_grad():
            attn.q_proj.weight.mul_(10)
            attn.k_proj.weight.mul_(10)
        after = attn.max_logit(x, model.rope_cos[:30], model.rope_sin[:30]).item()
        if qk_norm:
            bound = math.sqrt(D) * attn.q_norm.weight.abs().max().item() * attn.k_norm.weight.abs().max().item()
            assert after == pytest.approx(before, rel=1e-3) and after <= bound
        else:
            assert after == pytest.approx(100 * before, rel=1e-4)


@pytest.mark.parametrize("G", [1, 2, 8])
def test_qk_norm_cached_greedy_equals_uncached(G: int) -> None:
    model = tiny(G, qk_norm=True)
    prompt = tokens(2, 8)
    cached = model.generate(prompt, 40, use_cache=True)
    assert torch.equal(cached, model.generate(prompt, 40, use_cache=False))
    assert cached[:, 8:].unique().numel() > 5


# --- KV cache -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("G", GROUPS)
def test_cached_greedy_equals_uncached_for_64_tokens(G: int) -> None:
    model = tiny(G)
    prompt = tokens(2, 8)
    cached = model.generate(prompt, 64, use_cache=True)
    uncached = model.generate(prompt, 64, use_cache=False)
    assert cached.shape == (2, 72)
    assert torch.equal(cached[:, :8], prompt)
    assert torch.equal(cached, uncached)
    assert cached[:, 8:].unique().numel() > 5  # a real continuation, not one repeated token


@pytest.fixture
def sdpa_calls(monkeypatch) -> list[tuple[tuple[int, ...], bool]]:
    """Record (q shape, enable_gqa) of every scaled_dot_product_attention call the model makes."""
    calls: list[tuple[tuple[int, ...], bool]] = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append((tuple(q.shape), kwargs.get("enable_gqa", False)))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


@pytest.mark.parametrize("backend", ["auto", "math"])
@pytest.mark.parametrize("G", GROUPS)
def test_folded_decode_step_equals_grouped_sdpa(G: int, backend: str, sdpa_calls) -> None:
    model = tiny(G, sdpa_backend=backend)
    B, T, D = 3, 9, model.cfg.d_head
    steps = {}
    for fold in (True, False):
        model.set_fold_decode(fold)
        cache = model.new_cache(B)
        model(tokens(B, T), cache)
        sdpa_calls.clear()
        steps[fold] = [model(tokens(B, 1, seed=s), cache)[:, -1] for s in range(1, 6)]
        q_shape = (B, G, H // G, D) if fold else (B, H, 1, D)
        assert sdpa_calls == [(q_shape, not fold)] * (2 * 5)  # 2 layers x 5 steps, one path only
    for folded, grouped in zip(steps[True], steps[False]):
        torch.testing.assert_close(folded, grouped, rtol=1e-5, atol=1e-5)


def test_fold_decode_defaults_to_cpu_only_and_prefill_keeps_enable_gqa(sdpa_calls) -> None:
    model = tiny(2)
    assert model.layers[0].attn.fold_decode is None and model.layers[0].attn.folds(torch.zeros(1))
    assert not model.layers[0].attn.folds(torch.zeros(1, device="meta"))  # any non-CPU device: unfolded
    model.generate(tokens(2, 6), 3)
    prefill, steps = sdpa_calls[:2], sdpa_calls[2:]
    assert prefill == [((2, H, 6, model.cfg.d_head), True)] * 2
    assert steps == [((2, 2, H // 2, model.cfg.d_head), False)] * (2 * 2)


@pytest.mark.parametrize("G", [1, 4])
def test_cached_greedy_equals_uncached_with_either_decode_path(G: int, repeat_calls) -> None:
    model = tiny(G)
    prompt = tokens(2, 8)
    uncached = model.generate(prompt, 40, use_cache=False)
    for fold in (True, False):
        model.set_fold_decode(fold)
        assert torch.equal(model.generate(prompt, 40, use_cache=True), uncached)
    assert repeat_calls == []  # neither decode path repeats K/V


def test_decode_attends_to_a_view_of_the_cache_not_a_copy() -> None:
    model = tiny(2)
    cache = model.new_cache(2)
    model(tokens(2, 5), cache)
    k, v = cache.append(0, torch.ones(2, 2, 1, model.cfg.d_head), torch.ones(2, 2, 1, model.cfg.d_head))
    assert k.data_ptr() == cache.k[0].data_ptr() and v.data_ptr() == cache.v[0].data_ptr()
    assert k.shape[2] == 6 and torch.equal(cache.k[0][:, :, 5], torch.ones(2, 2, model.cfg.d_head))


@pytest.mark.parametrize("G", GROUPS)
def test_cache_holds_exactly_G_heads_of_rotated_keys(G: int) -> None:
    model = tiny(G)
    B, T, D = 3, 11, model.cfg.d_head
    cache = model.new_cache(B)
    step_logits = [model(tokens(B, T), cache)[:, -1]]
    nxt = tokens(B, 1, seed=5)
    step_logits.append(model(nxt, cache)[:, -1])
    assert cache.length == T + 1
    for buf in cache.k + cache.v:
        assert buf.shape == (B, G, BLOCK, D)
    # Layer 0's cached keys are RoPE(k_proj(norm(embed(tokens)))) with G heads.
    idx = torch.cat((tokens(B, T), nxt), dim=1)
    blk = model.layers[0]
    k = (blk.attn_norm(model.embed(idx)) @ blk.attn.k_proj.weight.T).view(B, T + 1, G, D).transpose(1, 2)
    torch.testing.assert_close(cache.k[0][:, :, : T + 1], ref_rope(k, model.cfg.rope_theta), rtol=1e-4, atol=1e-5)
    assert cache.k[0][:, :, T + 1 :].abs().sum() == 0
    # Incremental logits equal a full forward's.
    full = model(idx)
    torch.testing.assert_close(step_logits[1], full[:, -1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype,nbytes", [(torch.float32, 4), (torch.bfloat16, 2)])
@pytest.mark.parametrize("G", GROUPS)
def test_kv_cache_nbytes(G: int, dtype: torch.dtype, nbytes: int) -> None:
    model = tiny(G).to(dtype)
    B, T, L, D = 2, 13, model.cfg.n_layers, model.cfg.d_head
    cache = model.new_cache(B)
    assert cache.k[0].dtype == dtype
    model(tokens(B, T), cache)
    assert cache.nbytes() == 2 * G * D * L * T * B * nbytes
    assert cache.nbytes(BLOCK) == 2 * G * D * L * BLOCK * B * nbytes
    assert cache.nbytes() == model.cfg.kv_bytes_per_token(nbytes) * T * B
    assert cache.nbytes(BLOCK) == sum(t.nbytes for t in cache.k + cache.v)  # whole buffers


def test_cache_dtype_follows_autocast() -> None:
    model = tiny(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache = model.new_cache(1)
        logits = model(tokens(1, 5), cache)
    assert cache.k[0].dtype == torch.bfloat16 and logits.dtype == torch.bfloat16
    assert isinstance(cache, KVCache) and cache.length == 5


# --- K/V are never repeated to H heads on the hot path ----------------------------------------------------

REPEAT_OPS = [
    (torch, "repeat_interleave"),
    (torch.Tensor, "repeat_interleave"),
    (torch.Tensor, "expand"),
    (torch.Tensor, "expand_as"),
    (torch.Tensor, "repeat"),
    (torch, "tile"),
    (torch.Tensor, "tile"),
    (torch, "broadcast_to"),
]


@pytest.fixture
def repeat_calls(monkeypatch) -> list[tuple[str, tuple[int, ...]]]:
    """Record every repeat/expand call on a tensor with a head dimension (>= 4-D: B, heads, T, d_head)."""
    calls: list[tuple[str, tuple[int, ...]]] = []

    def spy(name, fn):
        def wrapper(*args, **kwargs):
            if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 4:
                calls.append((name, tuple(args[0].shape)))
            return fn(*args, **kwargs)

        return wrapper

    for owner, name in REPEAT_OPS:
        monkeypatch.setattr(owner, name, spy(name, getattr(owner, name)))
    return calls


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """HF's repeat_kv, the pattern the model must not use."""
    B, G, T, D = x.shape
    return x[:, :, None].expand(B, G, n_rep, T, D).reshape(B, G * n_rep, T, D)


def test_repeat_spy_catches_deliberate_repeats(repeat_calls) -> None:
    k = torch.randn(2, 2, 5, 8)
    k.repeat_interleave(4, dim=1)
    torch.repeat_interleave(k, 4, dim=1)
    repeat_kv(k, 4)
    assert [name for name, _ in repeat_calls] == ["repeat_interleave", "repeat_interleave", "expand"]


@pytest.mark.parametrize("G", GROUPS)
def test_forward_and_generate_never_repeat_kv(G: int, repeat_calls) -> None:
    model = tiny(G).train()
    idx = tokens(2, 16)
    F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    model.eval()
    model.generate(idx, 8, use_cache=True)
    model.generate(idx, 8, use_cache=False)
    model.generate(idx, 8, temperature=1.0, top_k=5)
    model.max_attn_logit(idx)
    assert repeat_calls == []


# --- other numerics ---------------------------------------------------------------------------------------


def test_rmsnorm_computes_in_fp32_and_returns_input_dtype() -> None:
    norm = RMSNorm(64, eps=1e-5).bfloat16()
    x = (torch.randn(4, 64, generator=torch.Generator().manual_seed(0)) * 30).bfloat16()
    fp32 = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()
    naive_bf16 = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, fp32)
    assert not torch.equal(out, naive_bf16)  # the check can tell the two apart


@pytest.mark.parametrize("autocast", [False, True], ids=["bf16-weights", "bf16-autocast"])
def test_cpu_bf16_attention_runs_in_fp32_on_G_heads(autocast: bool, monkeypatch) -> None:
    model = tiny(2, std=0.02)
    model = model if autocast else model.bfloat16()
    idx = tokens(2, 16)
    seen: list[tuple[torch.dtype, int]] = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((q.dtype, k.shape[1]))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    outs = {}
    for fp32 in (None, False):  # None: the CPU default (fp32 attention); False: the bf16 kernel
        model.set_fp32_attention(fp32)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            outs[fp32] = model(idx).float()
    assert seen == [(torch.float32, 2)] * 2 + [(torch.bfloat16, 2)] * 2  # K/V keep G = 2 heads either way
    assert_close_to_scale(outs[None], outs[False], tol=3e-2, what="fp32 vs bf16 attention")
    # The default path is exactly SDPA in fp32 on the bf16 q, k, v, rounded once to bf16.
    attn, x = model.layers[0].attn, model.layers[0].attn_norm(model.embed(idx))
    cos, sin = model._rope(0, idx.shape[1])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        q, k, v = attn.qkv(x, cos, sin)
        with torch.autocast("cpu", enabled=False):
            ref = real(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True).to(q.dtype)
        attn.fp32_attention = None
        got = attn(x, cos, sin)
        want = attn.o_proj(ref.transpose(1, 2).reshape(*idx.shape, -1))
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_tied_embeddings_share_one_tensor() -> None:
    tied, untied = tiny(2, tie_embeddings=True), tiny(2)
    assert tied.lm_head.weight is tied.embed.weight
    assert untied.num_params() - tied.num_params() == V * 64
    assert untied.num_params(non_embedding=True) == untied.num_params() - V * 64
    assert tied.num_params(non_embedding=True) == tied.num_params()  # the table is also the output matmul


def test_math_backend_matches_auto() -> None:
    auto, math_ = tiny(4), tiny(4, sdpa_backend="math")
    idx = tokens(2, 20)
    torch.testing.assert_close(auto(idx), math_(idx))


def test_d_head_may_differ_from_d_model_over_heads() -> None:
    model = tiny(2, d_head=16)  # H * d_head = 128 != d_model = 64
    assert model.layers[0].attn.q_proj.weight.shape == (128, 64)
    logits, _ = ref_forward(model, tokens(1, 9))
    torch.testing.assert_close(model(tokens(1, 9)), logits, rtol=1e-4, atol=1e-5)


# --- bad input: ValueError naming the valid choices ---------------------------------------------------------


def cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=V, block_size=32, n_layers=2, d_model=64, n_heads=8, n_kv_heads=2)
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize(
    "kw,message",
    [
        (
            dict(d_model=48, n_heads=12, n_kv_heads=5),
            "n_heads=12 is not divisible by n_kv_heads=5; choose n_kv_heads from 1, 2, 3, 4, 6, 12",
        ),
        (dict(qk_norm="yes"), "qk_norm='yes' must be true or false"),
        (
            dict(n_kv_heads=16),
            "n_kv_heads=16 is larger than n_heads=8; choose n_kv_heads from 1, 2, 4, 8 (G=1 is MQA, G=8 is MHA)",
        ),
        (
            dict(n_kv_heads=0),
            "n_kv_heads=0 must be a positive integer; choose n_kv_heads from 1, 2, 4, 8 (divisors of n_heads=8)",
        ),
        (
            dict(n_kv_heads=-2),
            "n_kv_heads=-2 must be a positive integer; choose n_kv_heads from 1, 2, 4, 8 (divisors of n_heads=8)",
        ),
        (
            dict(n_heads=6),
            "d_model=64 is not divisible by n_heads=6; choose n_heads from 1, 2, 4, 8, 16, 32 "
            "or set an even d_head explicitly",
        ),
        (
            dict(d_model=24),
            "d_model=24 gives an odd d_head (RoPE needs it even) with n_heads=8; choose n_heads from "
            "1, 2, 3, 4, 6, 12 or set an even d_head explicitly",
        ),
        (dict(d_head=5), "d_head=5 must be a positive even integer for RoPE; set an even d_head"),
        (dict(d_ff=0), "d_ff=0 must be a positive integer (or None for ~8/3 d_model)"),
        (dict(block_size=0), "block_size=0 must be a positive integer"),
        (dict(sdpa_backend="fast"), "sdpa_backend='fast'; choose from auto, flash, cudnn, efficient, math"),
    ],
)
def test_bad_config_raises_with_valid_choices(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        cfg(**kw)


def test_config_derives_d_head_d_ff_and_group_size() -> None:
    c = cfg(d_model=48, n_heads=12, n_kv_heads=3)
    assert (c.d_head, c.group_size, c.d_ff) == (4, 4, 128)
    assert cfg(d_ff=100).d_ff == 100  # an explicit width is kept as is (HF takes any intermediate_size)


def test_generate_rejects_prompt_longer_than_block() -> None:
    model = DecoderLM(cfg())
    msg = "prompt has 33 tokens but block_size=32; crop the prompt to its last 32 tokens"
    for use_cache in (True, False):
        with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
            model.generate(tokens(1, 33), 1, use_cache=use_cache)


def test_generate_with_cache_rejects_running_past_block() -> None:
    model = DecoderLM(cfg())
    msg = (
        "prompt (10) + max_new_tokens (23) exceeds block_size=32 for the KV cache; "
        "use max_new_tokens <= 22 or use_cache=False (sliding window)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        model.generate(tokens(1, 10), 23)
    assert model.generate(tokens(1, 10), 22).shape == (1, 32)  # exactly the block fits
    assert model.generate(tokens(1, 10), 30, use_cache=False).shape == (1, 40)  # sliding window


def test_generate_rejects_bad_arguments() -> None:
    model = DecoderLM(cfg())
    for args, kw in [((tokens(1, 0), 3), {}), ((tokens(1, 4), -1), {}), ((tokens(1, 4), 3), {"top_k": 0})]:
        with pytest.raises(ValueError, match=r"^need a prompt of >= 1 token"):
            model.generate(*args, **kw)


def test_forward_and_cache_reject_bad_lengths() -> None:
    model = DecoderLM(cfg())
    msg = (
        "sequence of 33 tokens exceeds block_size=32; crop the input to at most 32 tokens "
        "or build the model with a larger block_size"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        model(tokens(1, 33))
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        model.max_attn_logit(tokens(1, 33))
    cache = model.new_cache(1)
    model(tokens(1, 30), cache)
    with pytest.raises(ValueError, match=re.escape("sequence of 33 tokens exceeds block_size=32")):
        model(tokens(1, 3), cache)
    with pytest.raises(ValueError, match="^KV cache accepts a prefill at position 0, then one token at a time$"):
        model(tokens(1, 2), cache)
    with pytest.raises(ValueError, match="^batch of 2 sequences but the cache was built for 1$"):
        model(tokens(2, 1), cache)
    assert cache.length == 30  # rejected calls leave the cache as it was


# ----------------------------------------------------------------------------------------------- per-layer G


def _per_layer(layout, **kw) -> ModelConfig:
    return ModelConfig(vocab_size=61, block_size=32, n_layers=len(layout), d_model=64, n_heads=8,
                       n_kv_heads=list(layout), **kw)  # fmt: skip


def test_per_layer_g_shapes_cache_and_bytes():
    cfg = _per_layer([8, 4, 2, 1])
    model = DecoderLM(cfg)
    assert [b.attn.k_proj.out_features for b in model.layers] == [64, 32, 16, 8]  # G_l * d_head (8)
    assert cfg.kv_layout == "8,4,2,1" and cfg.group_size is None and not cfg.uniform
    assert cfg.kv_bytes_per_token(2) == 2 * (8 + 4 + 2 + 1) * 8 * 2
    cache = model.new_cache(3)
    assert [tuple(k.shape) for k in cache.k] == [(3, G, 32, 8) for G in (8, 4, 2, 1)]
    assert cache.nbytes(10) == cfg.kv_bytes_per_token(4) * 10 * 3


def test_a_uniform_list_is_the_uniform_model():
    cfg = _per_layer([2, 2, 2])
    assert cfg.n_kv_heads == 2 and cfg.uniform and cfg.kv_layout == "2,2,2" and cfg.group_size == 4


@pytest.mark.parametrize(
    "layout, message",
    [
        ([8, 4, 3, 1], "layer 2: n_heads=8 is not divisible by n_kv_heads[2]=3; choose n_kv_heads[2] from 1, 2, 4, 8"),
        ([8, 16], "layer 1: n_kv_heads[1]=16 is larger than n_heads=8"),
    ],
)
def test_per_layer_validation_names_the_layer(layout, message):
    with pytest.raises(ValueError) as e:
        ModelConfig(vocab_size=61, block_size=32, n_layers=len(layout), d_model=64, n_heads=8, n_kv_heads=layout)
    assert message in str(e.value)


def test_per_layer_list_length_must_match_the_layers():
    with pytest.raises(ValueError, match=r"n_kv_heads=\[4, 2\] has 2 entries but n_layers=3; give one G per layer"):
        ModelConfig(vocab_size=61, block_size=32, n_layers=3, d_model=64, n_heads=8, n_kv_heads=[4, 2])


@pytest.mark.parametrize("layout", [[8, 4, 2, 1], [1, 1, 2, 4]])
def test_per_layer_cached_greedy_equals_uncached(layout):
    torch.manual_seed(0)
    model = DecoderLM(_per_layer(layout)).eval()
    prompt = torch.randint(61, (2, 5))
    cached = model.generate(prompt, 12, temperature=0.0)
    toks = prompt
    for _ in range(12):  # uncached reference: the full sequence every step
        toks = torch.cat([toks, model(toks)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, toks)
    for fold in (True, False):  # the folded and enable_gqa single-token paths agree per layer too
        model.set_fold_decode(fold)
        assert torch.equal(model.generate(prompt, 12, temperature=0.0), toks)

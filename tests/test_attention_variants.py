"""GTA and MLA beside GQA: config checks, the KV-bytes formulas (the GLA paper's numbers), exact caches and decode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gqa_sweep.config import run_id_of
from gqa_sweep.model.attention import (
    GQAAttention,
    GTAAttention,
    LatentCache,
    MLAAttention,
    TiedCache,
)
from gqa_sweep.model.kv_formula import kv_elements_per_layer
from gqa_sweep.model.shape import ModelConfig, matched_d_ff, non_embedding_params
from gqa_sweep.model.transformer import DecoderLM

BLOCK = 48


def cfg_of(attention="gqa", n_heads=4, n_kv_heads=2, d_model=64, **kw) -> ModelConfig:
    return ModelConfig(vocab_size=61, block_size=BLOCK, n_layers=2, d_model=d_model, n_heads=n_heads,
                       n_kv_heads=n_kv_heads, attention=attention, init_std=0.1, **kw)  # fmt: skip


def model_of(seed=0, **kw) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(cfg_of(**kw)).eval()


def tokens(B, T, seed=0):
    return torch.randint(61, (B, T), generator=torch.Generator().manual_seed(seed))


# Several shapes per variant: GTA at G = 1, 2, H and a non-default d_R; MLA plain, with a query latent, with
# q/k/v head sizes of their own, and with a latent smaller than d_head.
SHAPES = [
    {"attention": "gta", "n_kv_heads": 2},
    {"attention": "gta", "n_kv_heads": 1, "rope_dim": 4},
    {"attention": "gta", "n_kv_heads": 4, "n_heads": 4, "rope_dim": 12},
    {"attention": "mla"},
    {"attention": "mla", "kv_lora_rank": 24, "q_lora_rank": 32},
    {"attention": "mla", "kv_lora_rank": 40, "qk_nope_dim": 8, "v_dim": 12, "rope_dim": 4, "n_heads": 8},
    {"attention": "mla", "kv_lora_rank": 8, "rope_dim": 2},
]
IDS = ["gta-G2", "gta-G1-dR4", "gta-G4-dR12", "mla", "mla-qlora", "mla-dims", "mla-dc8"]


# --- config --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"attention": "mqa"}, "attention='mqa'; choose from gqa, gta, mla"),
        ({"rope_dim": 8}, "rope_dim=8 applies to attention=gta or mla only (attention=gqa); drop it"),
        ({"attention": "gta", "kv_lora_rank": 32}, "kv_lora_rank=32 applies to attention=mla only (attention=gta)"),
        ({"attention": "gta", "rope_dim": 5}, "rope_dim=5 must be even (RoPE rotates pairs of dims); e.g. rope_dim=8"),
        ({"attention": "gta", "rope_dim": 16}, "rope_dim=16 must be below d_head=16 for GTA"),
        ({"attention": "mla", "n_kv_heads": [2, 1]}, "attention=mla has no KV groups (one latent per token); give one"),
        ({"attention": "mla", "qk_norm": True}, "qk_norm is implemented for attention=gqa only; drop qk_norm"),
        ({"attention": "mla", "kv_lora_rank": 0}, "kv_lora_rank=0 must be a positive integer (or null for its default)"),
    ],
)
def test_config_errors_name_the_fix(kw, message) -> None:
    with pytest.raises(ValueError) as e:
        cfg_of(**kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_defaults_follow_deepseek_v2_and_mla_has_no_groups() -> None:
    gta, mla = cfg_of("gta"), cfg_of("mla", n_kv_heads=1)
    assert (gta.rope_dim, gta.kv_groups, gta.rope_dims) == (8, 2, 8)  # d_R = d_head / 2; G keeps its meaning
    assert (mla.kv_lora_rank, mla.rope_dim, mla.qk_nope_dim, mla.v_dim) == (64, 8, 16, 16)  # d_c = 4 d_head
    assert (mla.kv_groups, mla.n_kv_heads) == (None, 4)  # G is ignored: every head has its expanded K/V
    assert cfg_of().rope_dims == 16 and cfg_of().rope_dim is None
    assert ModelConfig(**mla.to_dict()) == mla  # normalising twice changes nothing (matched_d_ff rebuilds it)


def test_default_sweep_run_ids_are_unchanged_by_the_new_model_keys() -> None:
    from hydra import compose, initialize_config_dir

    from gqa_sweep.config import IDENTITY_DEFAULTS
    from gqa_sweep.spec import resolved
    from tests.conftest import ROOT

    ids, before = {}, {}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        for G in (1, 2, 4, 8):
            cfg = resolved(compose("config", overrides=[f"model.n_kv_heads={G}"]))
            assert cfg["model"]["attention"] == "gqa" and cfg["model"]["kv_lora_rank"] is None
            ids[G] = run_id_of(cfg)
            for key in IDENTITY_DEFAULTS:  # the config as it was before the variants (and decode modes) existed
                group, leaf = key.split(".")
                cfg[group].pop(leaf)
            before[G] = run_id_of(cfg)
        mla = run_id_of(resolved(compose("config", overrides=["model.attention=mla"])))
    # Stores written before the variants keep their runs (tests/test_identity.py reads one such store).
    assert ids == before and len(set(ids.values())) == 4
    assert mla not in ids.values()


# --- KV bytes: one formula per variant -------------------------------------------------------------------


def paper_cfg(attention, G, d_head, H=16):
    """One layer of the GLA paper's shape (H = 16, d_R = d_head / 2, MLA's d_c = 4 d_head)."""
    return ModelConfig(vocab_size=8, block_size=8, n_layers=1, d_model=H * d_head, n_heads=H, n_kv_heads=G,
                       attention=attention)  # fmt: skip


def test_kv_bytes_reproduce_the_gla_paper_table_15_and_23() -> None:
    bf16 = 2
    table15 = {("gqa", 16): 8192, ("gqa", 4): 2048, ("gta", 4): 1152, ("mla", 1): 1152}  # d_head 128, TP = 1
    table23 = {("gta", 4): 576, ("mla", 1): 576, ("gqa", 4): 1024, ("gqa", 1): 256}  # d_head 64
    for d_head, table in ((128, table15), (64, table23)):
        got = {k: paper_cfg(*k, d_head).kv_bytes_per_token(bf16) for k in table}
        assert got == table
    # DeepSeek-V2's "GQA with 2.25 groups": d_c + d_R = (4 + 1/2) d_head = 2 * 2.25 * d_head.
    assert paper_cfg("mla", 1, 128).kv_elements_per_layer() == 2 * 2.25 * 128


def test_kv_bytes_sum_over_layers_and_match_the_torch_free_formula() -> None:
    gta = ModelConfig(vocab_size=8, block_size=8, n_layers=3, d_model=64, n_heads=4, n_kv_heads=[4, 2, 1],
                      attention="gta")  # fmt: skip
    assert gta.kv_bytes_per_token(4) == 4 * sum(G * 16 + 8 for G in (4, 2, 1))
    assert kv_elements_per_layer("mla", None, 16, 8, 64) == 72 and kv_elements_per_layer("gqa", 2, 16) == 64


# --- caches and decode -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", SHAPES, ids=IDS)
def test_cache_holds_the_formula_elements_and_nbytes_agrees(kw) -> None:
    model = model_of(**kw)
    cfg, B, T = model.cfg, 3, 7
    cache = model.new_cache(B)
    assert isinstance(cache, TiedCache if cfg.attention == "gta" else LatentCache)
    model(tokens(B, T), cache)
    for layer in range(cfg.n_layers):
        assert cache.elements_per_token(layer) == cfg.kv_elements_per_layer(layer)
    assert cache.nbytes() == cfg.kv_bytes_per_token(4) * B * T  # fp32 weights: 4 bytes per element
    assert all(buf[:, :, T:].abs().sum() == 0 for buf in cache.buffers())  # nothing written past `length`


def test_mla_cache_is_the_normalised_latent_and_rotated_rope_key() -> None:
    model = model_of(attention="mla", kv_lora_rank=24)
    B, T = 2, 6
    cache = model.new_cache(B)
    idx = tokens(B, T)
    model(idx, cache)
    attn = model.layers[0].attn
    x = model.layers[0].attn_norm(model.embed(idx))
    ckr = x @ attn.kv_a_proj.weight.T
    c = F.rms_norm(ckr[..., :24], (24,), attn.kv_a_norm.weight, eps=1e-6)  # DeepseekV3's latent-norm eps
    (buf,) = cache.layers[0]
    torch.testing.assert_close(buf[:, 0, :T, :24], c, rtol=1e-5, atol=1e-6)
    # k_R is rotated: position 0 is unrotated, later positions differ from the raw projection.
    torch.testing.assert_close(buf[:, 0, 0, 24:], ckr[:, 0, 24:], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(buf[:, 0, 1:T, 24:], ckr[:, 1:, 24:])


@pytest.mark.parametrize("kw", SHAPES, ids=IDS)
def test_decode_steps_equal_the_full_forward(kw) -> None:
    """GTA's folded decode and MLA's absorbed decode give the expanded full forward's logits (fp32)."""
    model = model_of(**kw)
    B, T, P = 2, 13, 5
    idx = tokens(B, T, seed=3)
    full = model(idx)
    cache = model.new_cache(B)
    steps = [model(idx[:, :P], cache)[:, -1]] + [model(idx[:, t : t + 1], cache)[:, -1] for t in range(P, T)]
    torch.testing.assert_close(torch.stack(steps, 1), full[:, P - 1 :], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw", SHAPES, ids=IDS)
def test_cached_greedy_equals_uncached_greedy(kw) -> None:
    model = model_of(**kw)
    prompt = tokens(2, 6, seed=1)
    cached = model.generate(prompt, 30, use_cache=True)
    assert torch.equal(cached, model.generate(prompt, 30, use_cache=False))
    assert cached[:, 6:].unique().numel() > 3  # a real continuation


def test_mla_decode_is_absorbed_and_gta_training_is_grouped(monkeypatch) -> None:
    """MLA's decode SDPA sees one KV head of d_c + d_R and H query rows; GTA's calls have G heads of K/V."""
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append((tuple(q.shape), tuple(k.shape), tuple(v.shape), kwargs.get("enable_gqa", False)))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    mla = model_of(attention="mla", kv_lora_rank=24, n_heads=8)
    cache = mla.new_cache(2)
    mla(tokens(2, 5), cache)
    calls.clear()
    mla(tokens(2, 1), cache)
    assert calls == [((2, 1, 8, 24 + 4), (2, 1, 6, 24 + 4), (2, 1, 6, 24), False)] * 2
    calls.clear()
    gta = model_of(attention="gta", n_kv_heads=2)
    cache = gta.new_cache(2)
    gta(tokens(2, 5), cache)
    assert calls == [((2, 4, 5, 16), (2, 2, 5, 16), (2, 2, 5, 16), True)] * 2  # prefill: G heads of K/V
    calls.clear()
    gta(tokens(2, 1), cache)
    assert calls == [((2, 2, 2, 16), (2, 2, 6, 16), (2, 2, 6, 16), False)] * 2  # decode: folded, as GQA's


def test_build_attention_picks_one_class_per_type() -> None:
    kinds = {a: type(model_of(attention=a).layers[1].attn) for a in ("gqa", "gta", "mla")}
    assert kinds == {"gqa": GQAAttention, "gta": GTAAttention, "mla": MLAAttention}


@pytest.mark.parametrize("kw", SHAPES, ids=IDS)
def test_max_logit_matches_the_expanded_scores(kw) -> None:
    model = model_of(**kw)
    idx = tokens(1, 9)
    attn = model.layers[0].attn
    x = model.layers[0].attn_norm(model.embed(idx))
    cos, sin = model._rope(0, 9)
    if isinstance(attn, GTAAttention):
        q, tied, k_rope = attn.project(x, cos, sin)
        k, scale = attn.keys(tied, k_rope).repeat_interleave(attn.group_size, dim=1), model.cfg.d_head**-0.5
    else:
        q, k, _ = attn.expand(*attn.query(x, cos, sin), *attn.latent(x, cos, sin))
        scale = attn.scale
    ref = ((q @ k.transpose(-1, -2)).abs() * scale).tril().amax()
    torch.testing.assert_close(attn.max_logit(x, cos, sin), ref)


# --- parameter matching ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [*SHAPES, {"attention": "gta", "n_kv_heads": [2, 1]}], ids=[*IDS, "gta-per-layer"])
def test_non_embedding_params_formula_and_ffn_matching(kw) -> None:
    cfg = cfg_of(**kw)
    assert non_embedding_params(cfg) == DecoderLM(cfg).num_params(non_embedding=True)
    matched = ModelConfig(**{**cfg.to_dict(), "d_ff": matched_d_ff(cfg)})
    mha = non_embedding_params(cfg_of(n_heads=cfg.n_heads, n_kv_heads=cfg.n_heads))
    assert abs(non_embedding_params(matched) - mha) <= max(2.5e-3 * mha, 3 * 64 * 2 / 2)


def test_gqa_convert_refuses_a_gta_or_mla_checkpoint() -> None:
    from gqa_sweep.hf.convert import check_groups

    with pytest.raises(ValueError, match=r"^only attention=gqa checkpoints convert to fewer KV heads \(this one is "
                                         r"attention=mla\); train the GTA / MLA model from scratch"):  # fmt: skip
        check_groups(model_of(attention="mla"), 1)


def test_flops_per_token_uses_mla_head_sizes() -> None:
    from gqa_sweep.train.metrics import flops_per_token

    gqa, mla = model_of(), model_of(attention="mla", qk_nope_dim=8, v_dim=12, rope_dim=4)
    assert flops_per_token(gqa, 32) == 6 * gqa.num_params(non_embedding=True) + 12 * 2 * 4 * 16 * 32
    assert flops_per_token(mla, 32) == 6 * mla.num_params(non_embedding=True) + 6 * 2 * 4 * (8 + 4 + 12) * 32


@pytest.mark.parametrize("attention", ["gqa", "gta", "mla"])
def test_one_registry_names_each_types_module_cache_and_formulas(attention: str) -> None:
    from gqa_sweep.model.attention import build_attention, new_cache
    from gqa_sweep.model.kv_formula import ATTENTION_TYPES

    kind = ATTENTION_TYPES[attention]
    cfg = cfg_of(attention, q_lora_rank=16) if attention == "mla" else cfg_of(attention)
    assert type(build_attention(cfg)).__name__ == kind.module
    cache = new_cache(cfg, 2, "cpu", torch.float32)
    assert type(cache).__name__ == kind.cache
    assert cache.elements_per_token(0) == cfg.kv_elements_per_layer(0)  # the formula is what the cache holds
    assert non_embedding_params(cfg) == DecoderLM(cfg).num_params(non_embedding=True)
    with pytest.raises(ValueError, match="attention='xla'; choose from gqa, gta, mla"):
        cfg_of("xla")

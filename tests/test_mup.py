"""muP (model.parametrization=mup): the rules against microsoft/mup 1.0.0, sp at the base width, the attention
scale, the optimiser's groups, the config's checks and the run identity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gqa_sweep.config import run_id_of
from gqa_sweep.model.shape import ModelConfig
from gqa_sweep.model.transformer import DecoderLM
from gqa_sweep.train.module import LMModule

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = dict(vocab_size=97, block_size=16, n_layers=2, n_heads=4)


def cfg(d_model: int, G: int = 1, **kw) -> ModelConfig:
    return ModelConfig(d_model=d_model, n_kv_heads=G, **SHAPE, **kw)


@pytest.mark.parametrize("G", [1, 4])
def test_lr_multipliers_weight_decay_and_init_std_agree_with_mup(G: int) -> None:
    mup = pytest.importorskip("mup")
    ours = DecoderLM(cfg(256, G, parametrization="mup", mup_base_width=64))
    # mup's way: the sp model with a MuReadout (zero-init) head, base shapes from the same model at width 64.
    ref = DecoderLM(cfg(256, G))
    ref.lm_head = mup.MuReadout(256, SHAPE["vocab_size"], bias=False, readout_zero_init=True)
    base = DecoderLM(cfg(64, G))
    base.lm_head = mup.MuReadout(64, SHAPE["vocab_size"], bias=False)
    mup.set_base_shapes(ref, base, rescale_params=False)
    lr, wd = {}, {}
    for group in mup.MuAdamW(ref.parameters(), lr=1.0, weight_decay=0.1).param_groups:
        for p in group["params"]:
            lr[id(p)], wd[id(p)] = group["lr"], group["weight_decay"]
    mults = ours.lr_multipliers()
    hidden = 0
    torch.manual_seed(0)
    for (name, p), (ref_name, q) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        assert name == ref_name
        assert mults[name] == pytest.approx(lr[id(q)], rel=1e-12), name
        assert ours.fan_in_mult(name) * 0.1 == pytest.approx(wd[id(q)], rel=1e-12), name  # MuAdamW: decay x m_in
        if name.endswith(("norm.weight", "q_proj.weight")) or name == "lm_head.weight":
            continue  # gains; the zero-init query and readout, asserted below
        depth = 1 / math.sqrt(2 * SHAPE["n_layers"]) if name.endswith(("o_proj.weight", "down_proj.weight")) else 1
        mup.init.normal_(q, std=0.02 * depth)
        assert p.std().item() == pytest.approx(q.std().item(), rel=0.06), name  # >= 12K entries each
        hidden += q.infshape.ninf() == 2
    assert hidden == 6 * SHAPE["n_layers"]  # k, v, o, gate, up, down (and q): K/V are hidden at G = 1 as at G = H
    assert (ours.lm_head.weight == 0).all() and (ref.lm_head.weight == 0).all()
    assert all((block.attn.q_proj.weight == 0).all() for block in ours.layers)  # mup's query_zero_init
    assert ours.output_mult == pytest.approx(1 / ref.lm_head.width_mult())


def test_the_rules_by_hand() -> None:
    model = DecoderLM(cfg(256, 2, parametrization="mup", mup_base_width=64))  # d_ff 704 vs 192 at the base
    mults = model.lr_multipliers()
    assert mults["layers.0.attn.k_proj.weight"] == mults["layers.0.mlp.up_proj.weight"] == 0.25
    assert mults["layers.0.attn.o_proj.weight"] == 0.25 and mults["layers.1.mlp.down_proj.weight"] == pytest.approx(192 / 704)
    assert mults["embed.weight"] == mults["lm_head.weight"] == mults["norm.weight"] == 1.0
    assert model.output_mult == 0.25
    assert model.cfg.attention_scale == pytest.approx(math.sqrt(16) / 64)  # base d_head 16, d_head 64
    sp = DecoderLM(cfg(256, 2))
    assert set(sp.lr_multipliers().values()) == {1.0} and sp.output_mult == 1.0
    assert sp.cfg.attention_scale == 1 / 8


def test_mup_at_the_base_width_computes_sp() -> None:
    """At the base width muP's forward is sp's (attention scale 1/sqrt(d_head), no output multiplier): the same
    weights give the same logits; its init differs from sp only by the zero query (and an untied readout)."""
    x = torch.randint(0, SHAPE["vocab_size"], (2, 16))
    torch.manual_seed(3)
    sp = DecoderLM(cfg(64, 2, tie_embeddings=True))
    mup = DecoderLM(cfg(64, 2, tie_embeddings=True, parametrization="mup", mup_base_width=64))
    assert mup.output_mult == 1.0 and mup.cfg.attention_scale == sp.cfg.attention_scale
    assert all((b.attn.q_proj.weight == 0).all() for b in mup.layers) and mup.embed.weight.abs().sum() > 0
    mup.load_state_dict(sp.state_dict())
    assert torch.equal(sp(x), mup(x))
    torch.manual_seed(3)
    wide = DecoderLM(cfg(128, 2, tie_embeddings=True, parametrization="mup", mup_base_width=64))
    assert wide.output_mult == 0.5 and wide.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)
    h = wide.norm(wide.embed(x))  # through no block: the readout's multiplier alone
    assert torch.allclose(h @ wide.embed.weight.T * 0.5, F.linear(h, wide.lm_head.weight) * wide.output_mult)


def test_attention_uses_the_mup_scale() -> None:
    """A layer's output equals softmax(q.k * sqrt(d_base) / d_head) v by hand (not sp's 1 / sqrt(d_head))."""
    torch.manual_seed(0)
    model = DecoderLM(cfg(128, 2, parametrization="mup", mup_base_width=32)).eval()  # d_head 32, base 8
    with torch.no_grad():
        for block in model.layers:
            block.attn.q_proj.weight.normal_(0, 0.2)  # a trained, non-zero query: the scale shows
    attn = model.layers[0].attn
    x = torch.randn(1, 16, 128)
    cos, sin = model._rope(0, 16)
    q, k, v = attn.qkv(x, cos, sin)
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    mask = torch.ones(16, 16, dtype=torch.bool).tril()
    scores = (q @ k.transpose(-1, -2) * (math.sqrt(8) / 32)).masked_fill(~mask, float("-inf"))
    y = attn.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 16, -1))
    assert torch.allclose(attn(x, cos, sin), y, atol=1e-6)
    # Decode through the cache (the folded step included) sees the same scale as training.
    ids = torch.randint(0, SHAPE["vocab_size"], (1, 12))
    cache = model.new_cache(1)
    steps = [model(ids[:, :8], cache)[:, -1]] + [model(ids[:, t : t + 1], cache)[:, -1] for t in range(8, 12)]
    full = model(ids)
    assert torch.allclose(torch.stack(steps[1:], 1), full[:, 8:12], atol=1e-5)


def test_the_optimiser_trains_each_group_at_its_lr() -> None:
    m = LMModule(cfg(128, 1, parametrization="mup", mup_base_width=32).to_dict(), lr=0.01, weight_decay=0.1)
    groups = m.configure_optimizers()["optimizer"].param_groups
    by_param = {id(p): (g["initial_lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(m.model.named_parameters())
    assert groups[0]["initial_lr"] == 0.01  # the logged lr is the base one (the embedding's group)
    assert by_param[id(named["layers.0.attn.q_proj.weight"])] == pytest.approx((0.01 / 4, 0.4))
    assert by_param[id(named["lm_head.weight"])] == (0.01, 0.1)
    assert by_param[id(named["norm.weight"])] == (0.01, 0.0)
    sp = LMModule(cfg(128, 1).to_dict(), lr=0.01).configure_optimizers()["optimizer"].param_groups
    assert [(g["initial_lr"], g["weight_decay"]) for g in sp] == [(0.01, 0.1), (0.01, 0.0)]  # sp: the two groups as before


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(parametrization="mu"), "parametrization='mu'; choose from sp, mup"),
        (dict(mup_base_width=64), "applies to parametrization=mup only"),
        (dict(parametrization="mup", mup_base_width=36), "choose a multiple of 8"),
        (dict(parametrization="mup", mup_base_width=0), "must be a positive integer"),
        (dict(parametrization="mup", attention="mla"), "implemented for attention=gqa only"),
    ],
)
def test_bad_settings_name_the_fix(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        cfg(128, 1, **kw)


def test_the_two_parametrizations_never_share_an_id() -> None:
    run = {"model": {"d_model": 128, "n_heads": 8}, "seed": 0}
    sp = {"model": {**run["model"], "parametrization": "sp", "mup_base_width": None}, "seed": 0}
    mup = {"model": {**run["model"], "parametrization": "mup", "mup_base_width": None}, "seed": 0}
    mup64 = {"model": {**mup["model"], "mup_base_width": 64}, "seed": 0}
    assert run_id_of(sp) == run_id_of(run)  # every stored run keeps its id
    assert len({run_id_of(run), run_id_of(mup), run_id_of(mup64)}) == 3


def test_a_mup_model_refuses_the_hf_export() -> None:
    from gqa_sweep.hf.export import hf_config

    with pytest.raises(ValueError, match="muP model .* cannot be exported"):
        hf_config(cfg(64, 1, parametrization="mup"))


def test_a_ladder_holding_d_head_names_its_base_d_head() -> None:
    """The ladder holds H = 4 heads of d_head 16 while d_model grows; at d_model 64 that d_head equals d_model / H,
    which the run id cannot tell from the default, so the base d_head is said explicitly."""
    with pytest.raises(ValueError, match="hold d_head fixed across widths with mup_base_d_head=16"):
        cfg(64, 1, d_head=16, parametrization="mup", mup_base_width=20)
    model = DecoderLM(cfg(64, 1, d_head=16, parametrization="mup", mup_base_width=20, mup_base_d_head=16))
    assert model.cfg.attention_scale == 1 / 4  # d_head does not grow: sp's scale
    mults = model.lr_multipliers()
    assert mults["layers.0.attn.o_proj.weight"] == 1 and mults["layers.0.attn.k_proj.weight"] == 20 / 64
    with pytest.raises(ValueError, match="mup_base_d_head=16 must be a positive even integer and needs"):
        cfg(64, 1, mup_base_d_head=16)

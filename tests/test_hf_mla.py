"""MLA <-> transformers DeepseekV3ForCausalLM (dense): equal logits, exact round trip, a pipeline; GTA refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from gqa_sweep.hf.export import export_main, from_hf, load_hf_dir, model_config_from_hf, to_hf
from gqa_sweep.model.shape import ModelConfig
from gqa_sweep.model.transformer import DecoderLM
from gqa_sweep.train.checkpoint import save_model

pytestmark = pytest.mark.usefixtures("one_thread")

V, BLOCK = 53, 32
# Plain q_proj at DeepSeek-V2's ratios; a query latent; q/k/v head sizes of their own with tied embeddings.
SHAPES = {
    "v2-ratios": {},
    "q-lora": {"q_lora_rank": 24, "kv_lora_rank": 20, "n_heads": 8},
    "own-dims": {"kv_lora_rank": 40, "qk_nope_dim": 8, "v_dim": 12, "rope_dim": 4, "tie_embeddings": True},
}


def mla(n_heads=4, d_model=64, **kw) -> DecoderLM:
    """Random weights away from init (norm gains too), non-default rope_theta and eps."""
    torch.manual_seed(n_heads)
    cfg = ModelConfig(vocab_size=V, block_size=BLOCK, n_layers=2, d_model=d_model, n_heads=n_heads, n_kv_heads=1,
                      attention="mla", rope_theta=500.0, norm_eps=1e-5, **kw)  # fmt: skip
    model = DecoderLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.uniform_(0.5, 1.5) if name.endswith("norm.weight") else p.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("kw", SHAPES.values(), ids=SHAPES.keys())
def test_mla_exports_to_dense_deepseek_v3_with_equal_logits(kw) -> None:
    model = mla(**kw)
    hf = to_hf(model)
    assert type(hf).__name__ == "DeepseekV3ForCausalLM"
    c = hf.config
    assert (c.first_k_dense_replace, c.rope_interleave, c.num_key_value_heads) == (2, False, model.cfg.n_heads)
    assert c.q_lora_rank == kw.get("q_lora_rank") and not any("expert" in k for k in hf.state_dict())
    assert (c.kv_lora_rank, c.qk_rope_head_dim) == (model.cfg.kv_lora_rank, model.cfg.rope_dim)
    with torch.no_grad():
        for T in (1, 7, BLOCK):
            idx = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(T))
            torch.testing.assert_close(hf(idx).logits, model(idx), rtol=0, atol=1e-4)
        prompt = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(9))
        assert torch.equal(hf.generate(prompt, max_new_tokens=12, do_sample=False), model.generate(prompt, 12))


@pytest.mark.parametrize("kw", SHAPES.values(), ids=SHAPES.keys())
def test_mla_round_trips_through_deepseek_v3_exactly(kw) -> None:
    model = mla(**kw)
    back = from_hf(to_hf(model))
    assert back.cfg == model.cfg
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_deepseek_configs_we_cannot_load_are_named() -> None:
    c = to_hf(mla()).config
    c.first_k_dense_replace, c.rope_interleave = 1, True
    with pytest.raises(ValueError, match=r"^unsupported DeepseekV3 config for DecoderLM: first_k_dense_replace=1 < "
                                         r"num_hidden_layers=2 .*; rope_interleave=True"):  # fmt: skip
        model_config_from_hf(c)


def test_mla_export_dir_loads_in_a_pipeline_and_generates_our_text(tmp_path: Path) -> None:
    from gqa_sweep.data.tokenizer_export import hf_tokenizer
    from gqa_sweep.data.tokenizers import ByteTokenizer

    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=256, block_size=64, n_layers=1, d_model=32, n_heads=4, n_kv_heads=1,
                                  attention="mla", kv_lora_rank=16))  # fmt: skip
    ckpt = save_model(model, tmp_path / "run" / "model.pt")
    hf_tokenizer(ByteTokenizer()).save(str(tmp_path / "run" / "tokenizer.json"))
    assert export_main([str(ckpt), str(tmp_path / "hf")]) == 0
    prompt = "naïve café: "
    ids = torch.tensor([ByteTokenizer().encode(prompt)])
    ours = ByteTokenizer().decode(model.generate(ids, 16)[0].tolist())
    pipe = transformers.pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu")
    assert pipe(prompt, max_new_tokens=16, do_sample=False)[0]["generated_text"] == ours
    loaded = load_hf_dir(tmp_path / "hf")
    assert loaded.cfg == model.cfg


def test_gta_export_refuses_in_one_line(tmp_path: Path, capsys) -> None:
    cfg = ModelConfig(vocab_size=61, block_size=16, n_layers=1, d_model=32, n_heads=4, n_kv_heads=2, attention="gta")
    assert export_main([str(save_model(DecoderLM(cfg), tmp_path / "model.pt")), str(tmp_path / "hf")]) == 2
    assert capsys.readouterr().err == (
        "gqa-export: error: a GTA model (attention=gta) cannot be exported: transformers has no grouped-tied "
        "attention class; keep it as a gqa-sweep model.pt\n"
    )
    assert not (tmp_path / "hf").exists()


def test_hf_deepseek_v3_caches_the_same_latent_and_rope_key_as_ours() -> None:
    """transformers 5.24 caches MLA compressed (not expanded per-head K/V): the same elements as our LatentCache."""
    model = mla(kv_lora_rank=20)
    idx = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        layer = to_hf(model)(idx, use_cache=True).past_key_values.layers[0]
        cache = model.new_cache(2)
        model(idx, cache)
    (ours,) = cache.layers[0]
    assert layer.keys.shape == (2, 1, 7, 20) and layer.values.shape == (2, 1, 7, model.cfg.rope_dim)
    torch.testing.assert_close(layer.keys, ours[:, :, :7, :20], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.values, ours[:, :, :7, 20:], rtol=1e-5, atol=1e-5)

"""The static-cache decode step (gqa_sweep/model/decode.py): eager equals the dynamic cache token for token and
logit for logit; the CUDA-graph replay equals eager (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from gqa_sweep.model.decode import StaticDecoder, resolve_mode
from gqa_sweep.model.shape import ModelConfig
from gqa_sweep.model.transformer import DecoderLM

CASES = [("gqa", 1), ("gqa", 2), ("gqa", 4), ("gta", 2), ("mla", 4)]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device (none here)")


def model_for(attention: str, G: int, device="cpu", dtype=torch.float32) -> DecoderLM:
    cfg = ModelConfig(vocab_size=64, block_size=48, n_layers=2, d_model=32, n_heads=4, n_kv_heads=G,
                      attention=attention)  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device), torch.no_grad():  # large weights: well separated logits, stable greedy choices
        model = DecoderLM(cfg).to(dtype).eval()
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def prefilled(model: DecoderLM, batch: int = 3, prompt: int = 10):
    g = torch.Generator(device=model.embed.weight.device).manual_seed(1)
    idx = torch.randint(model.cfg.vocab_size, (batch, prompt), generator=g, device=g.device)
    cache = model.new_cache(batch)
    first = model(idx, cache)[:, -1].argmax(-1, keepdim=True)
    return cache, first


@pytest.mark.parametrize("attention, G", CASES)
def test_static_eager_decode_equals_the_dynamic_cache(attention: str, G: int) -> None:
    model = model_for(attention, G)
    cache, first = prefilled(model)
    ref_cache, _ = prefilled(model)
    ref, tok = [], first
    with torch.no_grad():
        for _ in range(12):
            logits = model(tok, ref_cache)[:, -1]
            tok = logits.argmax(-1, keepdim=True)
            ref.append((logits, tok))
    decoder = StaticDecoder(model, cache, mode="eager")
    out = decoder.generate(first, 12)
    assert torch.equal(out, torch.cat([t for _, t in ref], dim=1))
    assert out.unique().numel() > 3  # a real continuation, not one token repeated
    assert torch.equal(decoder.generate(first, 12), out)  # every call restarts at the prefill's 10 tokens
    assert cache.length == 22 and int(cache.pos) == 22
    # Logits too, step by step: the masked full-buffer step is the same arithmetic as the sliced one.
    decoder._restart()
    decoder.token.copy_(first)
    with torch.no_grad():
        for logits, tok in ref:
            torch.testing.assert_close(model(decoder.token, cache)[:, -1], logits, rtol=1e-5, atol=1e-5)
            decoder.token.copy_(tok)


def test_static_step_writes_at_the_device_position_and_masks_the_rest() -> None:
    model = model_for("gqa", 2)
    cache, first = prefilled(model, batch=2, prompt=5)
    StaticDecoder(model, cache, mode="eager").generate(first, 3)
    assert cache.mask.shape == (1, 1, 1, 48) and cache.mask[0, 0, 0].tolist() == [True] * 8 + [False] * 40
    assert cache.k[0][:, :, 8:].abs().sum() == 0  # nothing written past the last step's slot
    assert cache.k[0][:, :, 5:8].abs().sum() > 0


def test_decode_modes_and_bad_input_name_the_fix() -> None:
    assert resolve_mode("auto", "cpu") == "eager" and resolve_mode("auto", "cuda") == "graph"
    with pytest.raises(ValueError, match="graph captures a CUDA graph, but the model is on cpu; use eager"):
        resolve_mode("graph", "cpu")
    with pytest.raises(ValueError, match="decode mode 'fast'; choose from auto, eager, graph"):
        resolve_mode("fast", "cpu")
    model = model_for("gqa", 2)
    with pytest.raises(ValueError, match="prefill the prompt"):
        StaticDecoder(model, model.new_cache(2))
    cache, first = prefilled(model, batch=2, prompt=40)
    with pytest.raises(ValueError, match=r"new_tokens=9 must be in \[1, 8\]: the cache holds 40 of its 48 slots"):
        StaticDecoder(model, cache, mode="eager").generate(first, 9)
    with pytest.raises(ValueError, match="one token at a time"):
        model(torch.zeros(2, 2, dtype=torch.long), cache)


@cuda
@pytest.mark.parametrize("attention, G", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_replayed_decode_equals_eager_token_for_token(attention: str, G: int, dtype) -> None:
    model = model_for(attention, G, device="cuda", dtype=dtype)
    outs = {}
    for mode in ("eager", "graph"):
        cache, first = prefilled(model)
        decoder = StaticDecoder(model, cache, mode=mode)
        assert (decoder.graph is not None) == (mode == "graph")
        outs[mode] = [decoder.generate(first, 30), decoder.generate(first, 30)]
    assert torch.equal(outs["graph"][0], outs["eager"][0])
    assert torch.equal(outs["graph"][1], outs["graph"][0])  # a replayed call restarts like an eager one
    assert outs["graph"][0].unique().numel() > 3

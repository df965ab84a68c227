"""HF parity: to_hf / from_hf / load_hf_dir and the gqa-export CLI at every KV-head count (Llama; Qwen3 for qk_norm)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM

from gqa_sweep.hf.export import export_main, from_hf, load_hf_dir, model_config_from_hf, to_hf
from gqa_sweep.model.shape import ModelConfig
from gqa_sweep.model.transformer import DecoderLM
from gqa_sweep.train.checkpoint import save_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest

V, BLOCK = 53, 32
# (n_heads, n_kv_heads, d_model): every G for H=8, and H=12 with G=3.
SHAPES = [(8, 1, 64), (8, 2, 64), (8, 4, 64), (8, 8, 64), (12, 3, 48)]



def tiny(H: int, G: int, d_model: int, tie: bool = False, **kw) -> DecoderLM:
    """Random weights well away from init (norm gains included), non-default rope_theta and eps."""
    torch.manual_seed(H * 100 + G)
    cfg = ModelConfig(
        vocab_size=V, block_size=BLOCK, n_layers=2, d_model=d_model, n_heads=H, n_kv_heads=G,
        tie_embeddings=tie, rope_theta=500.0, norm_eps=1e-6, **kw,
    )  # fmt: skip
    model = DecoderLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.uniform_(0.5, 1.5) if name.endswith("norm.weight") else p.normal_(0, 0.3)
    return model.eval()


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def assert_same_logits(ours: DecoderLM, hf, lengths=(1, 7, BLOCK), atol: float = 1e-4) -> None:
    for T in lengths:
        idx = tokens(2, T, seed=T)
        torch.testing.assert_close(hf(idx).logits, ours(idx), rtol=0, atol=atol, msg=lambda m: f"T={T}: {m}")


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("H,G,d_model", SHAPES)
def test_to_hf_logits_equal_ours(H: int, G: int, d_model: int, tie: bool) -> None:
    model = tiny(H, G, d_model, tie)
    hf = to_hf(model)
    c = hf.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (H, G, d_model // H)
    assert (c.max_position_embeddings, c.intermediate_size, c.rms_norm_eps) == (BLOCK, model.cfg.d_ff, 1e-6)
    assert c.rope_parameters == {"rope_type": "default", "rope_theta": 500.0}
    assert c.tie_word_embeddings is tie
    assert (hf.lm_head.weight is hf.model.embed_tokens.weight) is tie
    assert hf.model.layers[0].self_attn.k_proj.weight.shape == (G * d_model // H, d_model)  # G heads, not H
    assert_same_logits(model, hf)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("H,G,d_model", SHAPES)
def test_from_hf_round_trips_exactly(H: int, G: int, d_model: int, tie: bool) -> None:
    model = tiny(H, G, d_model, tie)
    back = from_hf(to_hf(model))
    assert back.cfg == model.cfg
    assert back.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in back.state_dict().items())
    assert (back.lm_head.weight is back.embed.weight) is tie
    idx = tokens(2, BLOCK)
    with torch.no_grad():
        assert torch.equal(back(idx), model(idx))


@pytest.mark.parametrize("H,G,d_model", SHAPES)
def test_greedy_generate_equals_hf_generate(H: int, G: int, d_model: int) -> None:
    model = tiny(H, G, d_model)
    prompt = tokens(2, 5)
    hf_out = to_hf(model).generate(prompt, max_new_tokens=12, do_sample=False)
    ours = model.generate(prompt, 12)
    assert torch.equal(ours, hf_out)
    assert ours[:, 5:].unique().numel() > 3  # a real continuation


def test_explicit_head_dim_maps_to_hf_head_dim() -> None:
    model = tiny(8, 2, 64, d_head=16)  # H * d_head = 128 != d_model
    hf = to_hf(model)
    assert hf.config.head_dim == 16
    assert_same_logits(model, hf)
    assert from_hf(hf).cfg == model.cfg


def test_to_hf_rejects_d_model_not_divisible_by_heads() -> None:
    cfg = ModelConfig(vocab_size=V, block_size=8, n_layers=1, d_model=60, n_heads=8, n_kv_heads=2, d_head=8)
    model = DecoderLM(cfg)
    with pytest.raises(ValueError, match=r"^HF Llama needs d_model divisible by n_heads \(got d_model=60, n_heads=8"):
        to_hf(model)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_to_hf_keeps_half_precision_and_matches(dtype: torch.dtype) -> None:
    model = tiny(8, 2, 64).to(dtype)
    hf = to_hf(model)
    assert hf.dtype == dtype
    assert hf.model.rotary_emb.inv_freq.dtype == torch.float32  # RoPE frequencies are not rounded
    # Same cast order as HF (RMSNorm in fp32, RoPE tables cast to x's dtype): under one ulp at |logits| ~ 8,
    # with our attention in the half-precision kernel HF uses (on the CPU ours runs it in fp32 by default).
    model.set_fp32_attention(False)
    assert_same_logits(model, hf, atol=1e-2)


# --- gqa-export ---------------------------------------------------------------------------------------------


def test_export_main_writes_a_dir_from_pretrained_loads(tmp_path: Path, capsys) -> None:
    model = tiny(8, 2, 64, tie=True)
    ckpt = save_model(model, tmp_path / "model.pt")
    assert export_main([str(ckpt), str(tmp_path / "hf")]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    assert {"config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["num_key_value_heads"], config["architectures"]) == (2, ["LlamaForCausalLM"])
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert hf.dtype == torch.float32
    assert_same_logits(model, hf)
    back = load_hf_dir(tmp_path / "hf")
    assert back.cfg == model.cfg
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in back.state_dict().items())


def test_export_main_bf16(tmp_path: Path) -> None:
    model = tiny(8, 4, 64)
    ckpt = save_model(model, tmp_path / "model.pt")
    assert export_main([str(ckpt), str(tmp_path / "hf"), "--dtype", "bf16"]) == 0
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert hf.dtype == torch.bfloat16
    assert torch.equal(hf.model.layers[1].self_attn.v_proj.weight, model.layers[1].attn.v_proj.weight.bfloat16())
    model = model.bfloat16()
    model.set_fp32_attention(False)  # HF's bf16 attention kernel, for a like-for-like comparison
    assert_same_logits(model, hf, atol=1e-2)


@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")
def test_export_from_lightning_checkpoint(tmp_path: Path) -> None:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from gqa_sweep.train.module import LMModule

    module = LMModule(tiny(12, 3, 48).cfg.to_dict(), max_steps=2, warmup_steps=1)
    data = DataLoader(TensorDataset(tokens(4, 16), tokens(4, 16, seed=1)), batch_size=2)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, data, data)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    assert export_main([str(tmp_path / "last.ckpt"), str(tmp_path / "hf")]) == 0
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert_same_logits(module.model.eval(), hf)


def test_gqa_export_console_script(tmp_path: Path) -> None:
    exe = shutil.which("gqa-export")
    if exe is None:
        pytest.skip("console script not installed: pip install -e . --no-deps")
    model = tiny(8, 8, 64)
    ckpt = save_model(model, tmp_path / "model.pt")
    ok = subprocess.run([exe, str(ckpt), str(tmp_path / "hf")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert_same_logits(model, LlamaForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True))
    bad = subprocess.run([exe, str(tmp_path / "nope.pt"), str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"gqa-export: error: checkpoint {str(tmp_path / 'nope.pt')!r} does not exist; "
        "pass a model.pt or a Lightning .ckpt file"
    ]


@pytest.mark.parametrize(
    "content,expected",
    [
        (None, "does not exist; pass a model.pt or a Lightning .ckpt file"),
        (b"not a checkpoint", "is not a PyTorch checkpoint"),
        ({"weights": torch.zeros(3)}, "is not a gqa-sweep model checkpoint (no 'model_config')"),
    ],
)
def test_export_main_bad_checkpoint_is_one_line_exit_2(tmp_path: Path, capsys, content, expected: str) -> None:
    path = tmp_path / "model.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    assert export_main([str(path), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("gqa-export: error: ") and expected in err
    assert not (tmp_path / "hf").exists()


def test_export_main_rejects_unknown_dtype(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        export_main([str(tmp_path / "m.pt"), str(tmp_path / "hf"), "--dtype", "fp8"])
    assert exit_.value.code == 2
    assert "argument --dtype: invalid choice: 'fp8'" in capsys.readouterr().err


# --- from_hf on configs our model cannot represent --------------------------------------------------------------


def llama_config(**kw) -> LlamaConfig:
    base = dict(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=BLOCK,
    )  # fmt: skip
    return LlamaConfig(**{**base, **kw})


@pytest.mark.parametrize(
    "kw,problem",
    [
        (dict(attention_bias=True), "attention_bias=True (our model has no biases)"),
        (dict(mlp_bias=True), "mlp_bias=True (our model has no biases)"),
        (dict(hidden_act="gelu"), "hidden_act='gelu' (only 'silu', SwiGLU)"),
        (dict(attention_dropout=0.1), "attention_dropout=0.1 (our model has no dropout)"),
        (
            dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
            "RoPE scaling rope_type='linear' is not supported (only plain RoPE, 'default')",
        ),
    ],
)
def test_from_hf_rejects_unsupported_configs(kw: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=r"^unsupported Llama config for DecoderLM: (.*; )?" + re.escape(problem)):
        from_hf(LlamaForCausalLM(llama_config(**kw)))


def test_from_hf_lists_every_problem_and_rejects_other_architectures() -> None:
    with pytest.raises(ValueError) as err:
        model_config_from_hf(llama_config(attention_bias=True, hidden_act="relu"))
    assert str(err.value) == (
        "unsupported Llama config for DecoderLM: hidden_act='relu' (only 'silu', SwiGLU); "
        "attention_bias=True (our model has no biases)"
    )
    mistral = transformers.MistralConfig(hidden_size=64, num_attention_heads=8, num_key_value_heads=2)
    with pytest.raises(ValueError, match=r"model_type='mistral' \(only 'llama', or 'qwen3' for qk_norm\)"):
        model_config_from_hf(mistral)
    with pytest.raises(ValueError, match="^expected a transformers LlamaForCausalLM or Qwen3ForCausalLM, got LlamaModel$"):
        from_hf(transformers.LlamaModel(llama_config()))


def test_load_hf_dir_checks_before_reading_weights(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a Hugging Face model directory"):
        load_hf_dir(tmp_path / "missing")
    llama_config(hidden_act="gelu").save_pretrained(tmp_path)  # config only: weights are never reached
    with pytest.raises(ValueError, match=r"hidden_act='gelu'"):
        load_hf_dir(tmp_path)


def test_missing_transformers_names_the_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match="pip install transformers"):
        to_hf(tiny(8, 2, 64))


# --- qk_norm models: Qwen3 (per-head q_norm / k_norm before RoPE) --------------------------------------------


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("H,G,d_model", SHAPES)
def test_qk_norm_exports_to_qwen3_with_equal_logits(H: int, G: int, d_model: int, tie: bool) -> None:
    model = tiny(H, G, d_model, tie, qk_norm=True)
    hf = to_hf(model)
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    c = hf.config
    assert (c.model_type, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == ("qwen3", H, G, d_model // H)
    assert (c.attention_bias, c.use_sliding_window, c.sliding_window, c.rms_norm_eps) == (False, False, None, 1e-6)
    assert c.layer_types == ["full_attention"] * 2
    assert c.rope_parameters == {"rope_type": "default", "rope_theta": 500.0}
    attn = hf.model.layers[1].self_attn
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (d_model // H,)  # one gain per head dim
    assert torch.equal(attn.k_norm.weight, model.layers[1].attn.k_norm.weight)
    assert_same_logits(model, hf)


@pytest.mark.parametrize("H,G,d_model", [(8, 1, 64), (12, 3, 48)])
def test_qk_norm_round_trips_through_qwen3_exactly(H: int, G: int, d_model: int) -> None:
    model = tiny(H, G, d_model, qk_norm=True)
    back = from_hf(to_hf(model))
    assert back.cfg == model.cfg and back.cfg.qk_norm
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in back.state_dict().items())
    prompt = tokens(2, 5)
    assert torch.equal(model.generate(prompt, 12), to_hf(model).generate(prompt, max_new_tokens=12, do_sample=False))


def test_qk_norm_export_main_writes_a_qwen3_dir(tmp_path: Path, capsys) -> None:
    model = tiny(8, 2, 64, tie=True, qk_norm=True)
    assert export_main([str(save_model(model, tmp_path / "model.pt")), str(tmp_path / "hf")]) == 0
    assert "Qwen3ForCausalLM" in capsys.readouterr().out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("qwen3", ["Qwen3ForCausalLM"])
    assert_same_logits(model, transformers.Qwen3ForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True))
    back = load_hf_dir(tmp_path / "hf")
    assert back.cfg == model.cfg
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in back.state_dict().items())


def test_plain_model_still_exports_to_llama() -> None:
    hf = to_hf(tiny(8, 2, 64))
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert not hasattr(hf.model.layers[0].self_attn, "q_norm")


def test_from_hf_rejects_qwen3_sliding_window() -> None:
    qwen = transformers.Qwen3Config(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=8,
        num_key_value_heads=2, head_dim=8, use_sliding_window=True, sliding_window=16,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"^unsupported Qwen3 config for DecoderLM: use_sliding_window=True"):
        model_config_from_hf(qwen)


def _pipeline_text(out_dir: Path, prompt: str, new_tokens: int) -> str:
    pipe = transformers.pipeline("text-generation", model=str(out_dir), device="cpu")
    return pipe(prompt, max_new_tokens=new_tokens, do_sample=False)[0]["generated_text"]


def _our_text(model: DecoderLM, tok, prompt: str, new_tokens: int) -> str:
    ids = torch.tensor([tok.encode(prompt)])
    return tok.decode(model.eval().generate(ids, new_tokens, temperature=0.0)[0].tolist())


def test_exported_run_generates_our_text_in_a_pipeline(tiny_sweep: Path, tmp_path: Path) -> None:
    """gqa-export of a trained run ships its tokenizer: pipeline("text-generation") greedy = our generate."""
    import os

    from gqa_sweep.store.results import load_runs
    from gqa_sweep.train.checkpoint import load_model

    run_dir = tiny_sweep / "runs" / load_runs(tiny_sweep).run_id[0]
    old = os.umask(0o022)
    try:
        assert export_main([str(run_dir / "model.pt"), str(tmp_path / "hf")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "hf" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    model, _ = load_model(run_dir / "model.pt")
    ours = transformers.PreTrainedTokenizerFast(tokenizer_file=str(run_dir / "tokenizer.json"))
    prompt = "ROMEO:\nWhat "  # + 12 new tokens fits block_size 32
    assert tok(prompt)["input_ids"] == ours(prompt)["input_ids"]
    from gqa_sweep.data.tokenizers import CharTokenizer

    chars = CharTokenizer("".join(sorted(tok.get_vocab(), key=tok.get_vocab().get)))
    assert _pipeline_text(tmp_path / "hf", prompt, 12) == _our_text(model, chars, prompt, 12)


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_hf_tokenizer_has_our_ids(kind: str) -> None:
    from gqa_sweep.data.tokenizer_export import hf_tokenizer
    from gqa_sweep.data.tokenizers import BpeTokenizer, ByteTokenizer, CharTokenizer

    text = "ROMEO:\nBut soft, what light  through yonder\twindow breaks? é ü 日本 🙂\n\n"
    tok = {"char": lambda: CharTokenizer("".join(sorted(set(text)))), "byte": ByteTokenizer,
           "bpe": lambda: BpeTokenizer.train(text * 20, 300)}[kind]()
    hf = hf_tokenizer(tok)
    assert hf.encode(text).ids == tok.encode(text)
    assert hf.decode(tok.encode(text)) == tok.decode(tok.encode(text)) == text


def test_byte_model_export_generates_our_text_in_a_pipeline(tmp_path: Path) -> None:
    from gqa_sweep.data.tokenizer_export import hf_tokenizer
    from gqa_sweep.data.tokenizers import ByteTokenizer

    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=256, block_size=64, n_layers=1, d_model=32, n_heads=4, n_kv_heads=2))
    ckpt = save_model(model, tmp_path / "run" / "model.pt")
    hf_tokenizer(ByteTokenizer()).save(str(tmp_path / "run" / "tokenizer.json"))
    assert export_main([str(ckpt), str(tmp_path / "hf")]) == 0
    prompt = "naïve café: "
    ours = _our_text(model, ByteTokenizer(), prompt, 16)
    assert _pipeline_text(tmp_path / "hf", prompt, 16) == ours


def test_a_per_layer_model_fails_to_export_in_one_line(tmp_path, capsys):
    cfg = ModelConfig(vocab_size=61, block_size=16, n_layers=2, d_model=32, n_heads=4, n_kv_heads=[4, 1])
    ckpt = save_model(DecoderLM(cfg), tmp_path / "model.pt")
    assert export_main([str(ckpt), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err == (
        "gqa-export: error: per-layer KV heads (n_kv_heads=4,1) cannot be exported: Hugging Face Llama and Qwen3 "
        "have a single num_key_value_heads for every layer; convert to one G first (gqa-convert --groups G)\n"
    )
    assert not (tmp_path / "hf").exists()

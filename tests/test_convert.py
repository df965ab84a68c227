"""MHA -> GQA conversion: pooling arithmetic, exactness of the untouched weights, CLI and its errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from gqa_sweep.hf.convert import METHODS, convert_checkpoint, convert_model, main
from gqa_sweep.model.shape import ModelConfig
from gqa_sweep.model.transformer import DecoderLM
from gqa_sweep.train.checkpoint import load_model, save_model

H, D_MODEL, D_HEAD, LAYERS = 8, 64, 8, 2
KV_KEYS = ("attn.k_proj.weight", "attn.v_proj.weight")


def make_model(n_kv_heads: int = H, seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=61, block_size=32, n_layers=LAYERS, d_model=D_MODEL, n_heads=H, n_kv_heads=n_kv_heads)
    return DecoderLM(cfg).eval()


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(seed))


def head(w: torch.Tensor, h: int) -> torch.Tensor:
    return w[h * D_HEAD : (h + 1) * D_HEAD]


def tie_heads_within_groups(model: DecoderLM, groups: int) -> None:
    """Make every K/V head equal to the first head of its contiguous group of H/groups heads."""
    size = model.cfg.n_kv_heads // groups
    with torch.no_grad():
        for block in model.layers:
            for proj in (block.attn.k_proj, block.attn.v_proj):
                for h in range(model.cfg.n_kv_heads):
                    head(proj.weight, h).copy_(head(proj.weight, h // size * size))


def is_kv(key: str) -> bool:
    return key.endswith(KV_KEYS)


@pytest.mark.parametrize("method", ["mean", "first"])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_identical_heads_convert_without_changing_logits(groups, method):
    model = make_model()
    tie_heads_within_groups(model, groups)
    new = convert_model(model, groups, method)
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(new(x), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_shapes_have_g_heads(groups):
    new = convert_model(make_model(), groups, "mean")
    assert new.cfg.n_kv_heads == groups and new.cfg.n_heads == H
    for block in new.layers:
        assert block.attn.k_proj.weight.shape == (groups * D_HEAD, D_MODEL)
        assert block.attn.v_proj.weight.shape == (groups * D_HEAD, D_MODEL)
    assert new.new_cache(1).k[0].shape == (1, groups, 32, D_HEAD)
    assert new(tokens()).shape == (2, 16, 61)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_mean_is_the_hand_computed_mean_of_each_group(groups):
    model = make_model()
    new = convert_model(model, groups, "mean")
    size = H // groups
    src, dst = model.state_dict(), new.state_dict()
    for key in (k for k in src if is_kv(k)):
        for g in range(groups):
            total = torch.zeros(D_HEAD, D_MODEL)
            for r in range(size):
                total += head(src[key], g * size + r)
            torch.testing.assert_close(head(dst[key], g), total / size, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_first_keeps_head_zero_of_each_group(groups):
    model = make_model()
    new = convert_model(model, groups, "first")
    size = H // groups
    src, dst = model.state_dict(), new.state_dict()
    for key in (k for k in src if is_kv(k)):
        for g in range(groups):
            assert torch.equal(head(dst[key], g), head(src[key], g * size))


@pytest.mark.parametrize("method", METHODS)
def test_everything_but_kv_is_copied_exactly_and_not_shared(method):
    model = make_model()
    new = convert_model(model, 2, method)
    src, dst = model.state_dict(), new.state_dict()
    assert src.keys() == dst.keys()
    others = [k for k in src if not is_kv(k)]
    copied = {"embed", "q_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}
    copied |= {"attn_norm", "mlp_norm", "norm"}
    assert {k.split(".")[-2] for k in others} == copied
    for k in others:
        assert torch.equal(dst[k], src[k]), k
    with torch.no_grad():
        new.embed.weight.add_(1.0)
    assert not torch.equal(new.embed.weight, model.embed.weight)


@pytest.mark.parametrize("method", ["mean", "first"])
def test_g_equal_h_is_the_identity(method):
    model = make_model()
    new = convert_model(model, H, method)
    src, dst = model.state_dict(), new.state_dict()
    assert src.keys() == dst.keys() and all(torch.equal(src[k], dst[k]) for k in src)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(new(x), model(x))


def test_random_is_fresh_seeded_and_differs_from_pooling():
    model = make_model()
    a, b = convert_model(model, 2, "random", seed=3), convert_model(model, 2, "random", seed=3)
    c = convert_model(model, 2, "random", seed=4)
    mean, first = convert_model(model, 2, "mean"), convert_model(model, 2, "first")
    key = "layers.0.attn.k_proj.weight"
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.state_dict()[key], c.state_dict()[key])
    assert not torch.allclose(a.state_dict()[key], mean.state_dict()[key])
    assert not torch.allclose(a.state_dict()[key], first.state_dict()[key])
    kv = torch.cat([a.state_dict()[k].flatten() for k in a.state_dict() if is_kv(k)])
    assert abs(kv.std().item() - model.cfg.init_std) < 0.1 * model.cfg.init_std
    x = tokens()
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and not torch.allclose(a(x), mean(x))


def test_gqa_source_pools_contiguous_runs_of_its_kv_heads():
    model = make_model(n_kv_heads=4)
    new = convert_model(model, 2, "mean")
    w0, w1 = model.layers[1].attn.v_proj.weight, new.layers[1].attn.v_proj.weight
    torch.testing.assert_close(head(w1, 0), (head(w0, 0) + head(w0, 1)) / 2)
    torch.testing.assert_close(head(w1, 1), (head(w0, 2) + head(w0, 3)) / 2)
    assert new.cfg.n_kv_heads == 2 and new.cfg.group_size == 4


def test_bf16_source_stays_bf16_and_global_rng_is_untouched():
    model = make_model().to(torch.bfloat16)
    state = torch.get_rng_state()
    new = convert_model(model, 2, "mean")
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.dtype == torch.bfloat16 for p in new.parameters())


def test_tied_embeddings_stay_tied():
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=61, block_size=32, n_layers=1, d_model=32, n_heads=4, n_kv_heads=4, tie_embeddings=True
    )
    new = convert_model(DecoderLM(cfg), 1, "mean")
    assert new.lm_head.weight is new.embed.weight


@pytest.mark.parametrize(
    ("n_kv_heads", "groups", "method", "message"),
    [
        (8, 3, "mean",
         "groups=3 does not divide the checkpoint's 8 KV heads (n_heads=8); choose groups from 1, 2, 4, 8"),
        (4, 8, "mean", "groups=8 does not divide the checkpoint's 4 KV heads (n_heads=8); choose groups from 1, 2, 4"),
        (8, 0, "mean", "groups=0 must be a positive integer; choose groups from 1, 2, 4, 8"),
        (8, -2, "first", "groups=-2 must be a positive integer; choose groups from 1, 2, 4, 8"),
        (8, 2, "median", "unknown method 'median'; choose one of mean, first, random"),
    ],
)
def test_convert_model_rejects_bad_input(n_kv_heads, groups, method, message):
    with pytest.raises(ValueError) as e:
        convert_model(make_model(n_kv_heads), groups, method)
    assert str(e.value) == message


# --- checkpoints and CLI ---------------------------------------------------------------------------


def lightning_ckpt(model: DecoderLM, path) -> None:
    state = {"model." + k: v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": {"model_config": model.cfg.to_dict(), "lr": 3e-3}, "state_dict": state}, path)


@pytest.mark.parametrize("fmt", ["model.pt", "lightning.ckpt"])
@pytest.mark.parametrize("method", METHODS)
def test_cli_round_trip(tmp_path, capsys, fmt, method):
    model = make_model()
    src = tmp_path / fmt
    if fmt == "model.pt":
        save_model(model, src)
    else:
        lightning_ckpt(model, src)
    out = tmp_path / "out" / "gqa.pt"
    assert main([str(src), "--groups", "2", "--method", method, "--out", str(out), "--seed", "5"]) == 0
    kv0, kv1 = 2 * 8 * D_HEAD * LAYERS * 2, 2 * 2 * D_HEAD * LAYERS * 2
    n0 = model.num_params()
    n1 = n0 - 2 * LAYERS * (8 - 2) * D_HEAD * D_MODEL
    assert capsys.readouterr().out == (
        f"H=8, G 8 -> 2 ({method}): params {n0:,} -> {n1:,}, KV bytes/token (bf16/fp16) {kv0:,} -> {kv1:,}; wrote {out}\n"
    )
    loaded, meta = load_model(out)
    assert meta == {
        "converted_from": str(src),
        "method": method,
        "groups": 2,
        "source_n_kv_heads": 8,
        "seed": 5 if method == "random" else None,
    }
    expected = convert_model(model, 2, method, seed=5)
    assert loaded.cfg == expected.cfg
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_convert_checkpoint_chains_gqa_to_mqa(tmp_path):
    model = make_model()
    tie_heads_within_groups(model, 1)
    mid = convert_checkpoint(save_model(model, tmp_path / "mha.pt"), 4, "mean", tmp_path / "g4.pt")
    assert mid == tmp_path / "g4.pt"
    mqa, meta = load_model(convert_checkpoint(mid, 1, "first", tmp_path / "g1.pt"))
    assert mqa.cfg.n_kv_heads == 1 and meta["source_n_kv_heads"] == 4
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(mqa.eval()(x), model(x), atol=1e-5, rtol=0)


def bad_cli_cases(tmp_path):
    good = save_model(make_model(), tmp_path / "model.pt")
    not_model = tmp_path / "dict.pt"
    torch.save({"weights": torch.zeros(3)}, not_model)
    garbage = tmp_path / "notes.txt"
    garbage.write_text("hello")
    (tmp_path / "emptydir").mkdir()
    out = str(tmp_path / "o.pt")
    return [
        ([str(good), "--groups", "3", "--out", out],
         "groups=3 does not divide the checkpoint's 8 KV heads (n_heads=8); choose groups from 1, 2, 4, 8"),
        ([str(good), "--groups", "0", "--out", out],
         "groups=0 must be a positive integer; choose groups from 1, 2, 4, 8"),
        ([str(good), "--groups", "2", "--method", "avg", "--out", out],
         "unknown method 'avg'; choose one of mean, first, random"),
        ([str(tmp_path / "missing.pt"), "--groups", "2", "--out", out],
         f"checkpoint {str(tmp_path / 'missing.pt')!r} does not exist; pass a model.pt or a Lightning .ckpt file"),
        ([str(not_model), "--groups", "2", "--out", out],
         f"{str(not_model)!r} is not a gqa-sweep model checkpoint (no 'model_config'); "
         "pass a model.pt written by gqa-sweep/gqa-convert or a Lightning .ckpt of LMModule"),
        ([str(garbage), "--groups", "2", "--out", out], f"{str(garbage)!r} is not a PyTorch checkpoint ("),
        ([str(tmp_path / "emptydir"), "--groups", "2", "--out", out],
         f"{str(tmp_path / 'emptydir')!r} is a directory without config.json; pass a model.pt, a Lightning .ckpt "
         "or a Hugging Face Llama checkpoint directory (config.json + *.safetensors)"),
        ([str(good), "--groups", "2", "--out", str(tmp_path)],
         f"--out {str(tmp_path)!r} is a directory; pass a file path such as {str(tmp_path / 'model.pt')!r}"),
        ([str(good), "--groups", "2", "--out", str(good)],
         f"--out {str(good)!r} is the source checkpoint; choose a different output path"),
    ]


def test_cli_bad_input_is_one_line_on_stderr_with_exit_2(tmp_path, capsys):
    for argv, message in bad_cli_cases(tmp_path):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith(f"gqa-convert: error: {message}"), captured.err
        assert captured.err.count("\n") == 1, captured.err
    assert not (tmp_path / "o.pt").exists()


def test_cli_missing_groups_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["model.pt", "--out", "x.pt"])
    assert e.value.code == 2
    assert "the following arguments are required: --groups" in capsys.readouterr().err


# --- Hugging Face source ------------------------------------------------------------------------

needs_hf = pytest.mark.skipif(
    importlib.util.find_spec("gqa_sweep.hf.export") is None or importlib.util.find_spec("transformers") is None,
    reason="HF import needs gqa_sweep.hf.export and transformers",
)


def save_tiny_llama(path, **overrides):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=61, hidden_size=D_MODEL, intermediate_size=96, num_hidden_layers=LAYERS,
        num_attention_heads=H, num_key_value_heads=4, max_position_embeddings=32, **overrides,
    )
    llama = transformers.LlamaForCausalLM(config).eval()
    llama.save_pretrained(path)
    return llama


@needs_hf
def test_cli_converts_a_hugging_face_llama_directory(tmp_path, capsys):
    from gqa_sweep.hf.export import from_hf

    llama = save_tiny_llama(tmp_path / "hf")
    out = tmp_path / "g2.pt"
    assert main([str(tmp_path / "hf"), "--groups", "2", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("H=8, G 4 -> 2 (mean): ")
    loaded, meta = load_model(out)
    expected = convert_model(from_hf(llama), 2, "mean")
    assert meta["source_n_kv_heads"] == 4 and loaded.cfg == expected.cfg
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), expected.eval()(x), atol=1e-6, rtol=0)


@needs_hf
def test_cli_rejects_unusable_hugging_face_directories(tmp_path, capsys):
    save_tiny_llama(tmp_path / "biased", attention_bias=True)
    save_tiny_llama(tmp_path / "no_weights")
    for f in (tmp_path / "no_weights").glob("*.safetensors"):
        f.unlink()
    capsys.readouterr()  # drop save_pretrained's progress bar
    cases = {
        "biased": "unsupported Llama config for DecoderLM: attention_bias=True (our model has no biases)",
        "no_weights": f"cannot load Hugging Face checkpoint {str(tmp_path / 'no_weights')!r}: ",
    }
    for name, message in cases.items():
        assert main([str(tmp_path / name), "--groups", "2", "--out", str(tmp_path / "o.pt")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"gqa-convert: error: {message}") and err.count("\n") == 1, err


@pytest.mark.parametrize(("precision", "label", "nbytes"), [("32-true", "fp32", 4), ("bf16-mixed", "bf16", 2)])
def test_cli_kv_bytes_use_the_runs_dtype(tmp_path, capsys, precision, label, nbytes):
    """A run's model.pt sits beside its config.yaml: KV bytes are reported in the dtype the sweep's table uses."""
    run_dir = tmp_path / "run"
    save_model(make_model(), run_dir / "model.pt")
    (run_dir / "config.yaml").write_text(f"trainer:\n  precision: {precision}\n")
    assert main([str(run_dir / "model.pt"), "--groups", "2", "--out", str(tmp_path / "gqa.pt")]) == 0
    kv0, kv1 = 2 * 8 * D_HEAD * LAYERS * nbytes, 2 * 2 * D_HEAD * LAYERS * nbytes
    assert f"KV bytes/token ({label}) {kv0:,} -> {kv1:,};" in capsys.readouterr().out


def test_per_layer_conversion_mean_pools_each_layer_to_its_own_g(tmp_path, capsys):
    model = make_model()  # MHA, LAYERS layers
    layout = [4, 1][:LAYERS] + [2] * (LAYERS - 2)
    new = convert_model(model, layout, "mean")
    assert new.cfg.kv_heads_per_layer == layout and not new.cfg.uniform
    for i, g in enumerate(layout):
        for proj in ("k_proj", "v_proj"):
            w = getattr(model.layers[i].attn, proj).weight  # (H * d_head, d_model)
            by_hand = torch.stack([
                w.view(H, D_HEAD, D_MODEL)[j * (H // g):(j + 1) * (H // g)].mean(0) for j in range(g)
            ]).reshape(g * D_HEAD, D_MODEL)  # fmt: skip
            torch.testing.assert_close(getattr(new.layers[i].attn, proj).weight, by_hand, rtol=0, atol=1e-7)
    out = tmp_path / "layers.pt"
    assert main([str(save_model(model, tmp_path / "mha.pt")), "--groups", ",".join(map(str, layout)), "--out", str(out)]) == 0
    assert f"G {H} -> {','.join(map(str, layout))} (mean)" in capsys.readouterr().out
    assert load_model(out)[0].cfg.kv_heads_per_layer == layout


def test_per_layer_conversion_names_the_layer():
    with pytest.raises(ValueError, match=r"layer 1: groups\[1\]=3 does not divide the checkpoint's 8 KV heads"):
        convert_model(make_model(), [4, 3] + [1] * (LAYERS - 2), "mean")
    with pytest.raises(ValueError, match=f"has 1 entries but the checkpoint has {LAYERS} layers"):
        convert_model(make_model(), [4], "mean")

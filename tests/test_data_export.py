"""gqa-export declares the training delimiter as eos/bos: lm-eval-harness runs with no extra model arguments, and
a run on a tokenizer.json tokenizer exports with it and generates in a pipeline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from gqa_sweep.data.tokenizer_export import hf_tokenizer
from gqa_sweep.data.tokenizers import CharTokenizer
from gqa_sweep.hf.export import export_main
from gqa_sweep.model.shape import ModelConfig
from gqa_sweep.model.transformer import DecoderLM
from gqa_sweep.train.checkpoint import save_model
from tests.test_data_prepare import corpus, make_tokenizer_json


def export_run(tmp_path: Path, tokenizer_json: Path, vocab: int) -> Path:
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=vocab, block_size=64, n_layers=1, d_model=32, n_heads=4, n_kv_heads=2))
    ckpt = save_model(model, tmp_path / "run" / "model.pt")
    shutil.copy(tokenizer_json, tmp_path / "run" / "tokenizer.json")
    assert export_main([str(ckpt), str(tmp_path / "hf")]) == 0
    return tmp_path / "hf"


def test_tokenizer_json_run_exports_with_it_and_generates(tmp_path, capsys):
    src = corpus(tmp_path / "c", 20)
    tj = make_tokenizer_json(tmp_path / "tokenizer.json", [p.read_text() for p in src.iterdir()])
    out = export_run(tmp_path, tj, 300)
    assert "(eos = bos = </s>)" in capsys.readouterr().out
    tok = transformers.AutoTokenizer.from_pretrained(out)
    eos = tok.convert_tokens_to_ids("</s>")
    assert tok.eos_token == tok.bos_token == "</s>"
    cfg = json.loads((out / "config.json").read_text())
    gen = json.loads((out / "generation_config.json").read_text())
    assert cfg["eos_token_id"] == cfg["bos_token_id"] == gen["eos_token_id"] == eos
    prompt = "the kernel driver "
    from tokenizers import Tokenizer

    ours_tok = Tokenizer.from_file(str(tj))
    assert tok(prompt, add_special_tokens=False)["input_ids"] == ours_tok.encode(prompt).ids
    pipe = transformers.pipeline("text-generation", model=str(out), device="cpu")
    text = pipe(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]
    from gqa_sweep.train.checkpoint import load_model

    model, _ = load_model(tmp_path / "run" / "model.pt")
    ids = model.eval().generate(torch.tensor([ours_tok.encode(prompt).ids]), 12, temperature=0.0)[0].tolist()
    new = ids[len(ours_tok.encode(prompt).ids):]
    new = new[: new.index(eos) + 1] if eos in new else new  # HF stops at the eos it now knows
    assert text == prompt + ours_tok.decode(new, skip_special_tokens=True) and len(text) > len(prompt)


def test_char_run_exports_its_delimiter(tmp_path):
    tok = CharTokenizer("abc \n", eot=True)
    hf_tokenizer(tok).save(str(tmp_path / "tokenizer.json"))
    out = export_run(tmp_path, tmp_path / "tokenizer.json", tok.vocab_size)
    t = transformers.AutoTokenizer.from_pretrained(out)
    assert t.eos_token == "<|endoftext|>" and t.eos_token_id == tok.delimiter == 5


def test_a_run_without_delimiters_exports_saying_why_it_has_no_eos(tmp_path, capsys):
    tok = CharTokenizer("abc \n", eot=False)  # a single text file: data.delimiter=auto adds none
    hf_tokenizer(tok).save(str(tmp_path / "tokenizer.json"))
    out = export_run(tmp_path, tmp_path / "tokenizer.json", tok.vocab_size)
    assert "tokenizer.json (no eos: the run trained on one stream without document delimiters" in \
        capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["eos_token_id"] is None


MC_TASK = """task: gqa_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""


def test_lm_eval_runs_on_an_export_with_no_extra_model_args(tmp_path):
    lm_eval = shutil.which("lm_eval") or shutil.which("lm-eval")
    if lm_eval is None:
        pytest.skip("lm-eval is not installed (pip install -e .[dev])")
    tok = CharTokenizer(" abcdefghijklmnopqrstuvwxyz?:.\n", eot=True)
    hf_tokenizer(tok).save(str(tmp_path / "tokenizer.json"))
    out = export_run(tmp_path, tmp_path / "tokenizer.json", tok.vocab_size)
    rows = [{"question": "what is a cat?", "choices": [" an animal", " a rock"], "label": 0},
            {"question": "what is red?", "choices": [" a colour", " a number"], "label": 0}]
    (tmp_path / "tasks").mkdir()
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tasks" / "gqa_tiny_mc.yaml").write_text(MC_TASK.format(data=tmp_path / "mc.jsonl"))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"),
           "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([lm_eval, "--model", "hf", "--model_args", f"pretrained={out}", "--tasks", "gqa_tiny_mc",
                        "--include_path", str(tmp_path / "tasks"), "--device", "cpu", "--batch_size", "1",
                        "--output_path", str(tmp_path / "eval")], env=env, capture_output=True, text=True,
                       timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(next((tmp_path / "eval").rglob("results*.json")).read_text())
    acc = results["results"]["gqa_tiny_mc"]["acc,none"]
    assert acc in (0.0, 0.5, 1.0)  # two questions, scored (a random model: any of the three)

"""gqa-prepare: shard format and checks, kill -9 and resume byte-identical, foreign token files, tokenizers."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gqa_sweep.data.common import DataError
from gqa_sweep.data.prepare import prepare
from gqa_sweep.data.progress import Progress
from gqa_sweep.data.shards import LLMC_HEADER_BYTES, TokenStream, inspect, write_shard
from gqa_sweep.data.spec import check_data
from gqa_sweep.data.tokens import open_prepared, open_tokens

ROOT = Path(__file__).parents[1]
QUIET = Progress(enabled=False)


def corpus(root: Path, n: int, words: int = 60) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    vocab = ["alpha", "beta", "gamma", "delta", "kernel", "driver", "memory", "page", "lock", "the", "a", "of"]
    for i in range(n):
        text = " ".join(vocab[j] for j in rng.integers(0, len(vocab), words)) + f" #{i}\n"
        (root / f"d{i:05d}.txt").write_text(text)
    return root


def digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.bin"))}


# ------------------------------------------------------------------------------------------------- shards


def test_shard_header_and_truncation_are_checked(tmp_path):
    ids = np.arange(1000, dtype=np.uint16)
    f = tmp_path / "train-00000.bin"
    write_shard(f, ids, vocab_size=1000, delimiter=999)
    info = inspect(f)
    assert (info.n_tokens, info.vocab_size, info.delimiter, info.dtype.itemsize) == (1000, 1000, 999, 2)
    assert np.array_equal(TokenStream([info])[:], ids)
    assert f.stat().st_size == 1024 + 2000 and not list(tmp_path.glob(".*"))  # no temp file left
    f.write_bytes(f.read_bytes()[:-10])  # a half-copied shard
    with pytest.raises(DataError) as e:
        inspect(f)
    assert str(e.value) == (f"token file {f} is truncated or foreign (3014 bytes, its header says 3024); "
                            "delete it and rerun gqa-prepare (or copy it again)")


def test_token_stream_windows_cross_shard_boundaries(tmp_path):
    parts = [np.arange(0, 10), np.arange(10, 13), np.arange(13, 30)]
    infos = []
    for k, p in enumerate(parts):
        write_shard(tmp_path / f"s{k}.bin", p.astype(np.uint32), 100, None)
        infos.append(inspect(tmp_path / f"s{k}.bin"))
    s = TokenStream(infos)
    assert len(s) == 30 and s[:].tolist() == list(range(30))
    assert s.window(8, 8).tolist() == list(range(8, 16)) and s.window(12, 2).tolist() == [12, 13]


def test_meta_records_source_tokenizer_and_shards(tmp_path):
    src = corpus(tmp_path / "c", 50)
    d = {"source": "text", "path": str(src), "tokenizer": "byte", "cache_dir": str(tmp_path / "cache"),
         "shard_tokens": 5000}
    out = prepare(d, QUIET)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"]["n_files"] == 50 and meta["tokenizer"]["label"] == "byte"
    assert meta["delimiter"] == {"id": 256, "kind": "eot", "token": "<|endoftext|>", "policy": "auto"}
    assert meta["split"] == {"by": "document", "val_fraction": 0.1}
    train = meta["shards"]["train"]
    assert all(s["tokens"] == 5000 for s in train[:-1]) and 0 < train[-1]["tokens"] <= 5000
    assert sum(s["docs"] for s in train + meta["shards"]["val"]) == meta["documents"] == 50
    total = sum(p.stat().st_size for p in src.iterdir()) + 50  # every byte plus one delimiter per document
    assert sum(s["tokens"] for s in train + meta["shards"]["val"]) == total
    assert [p.name for p in sorted(out.iterdir())][:2] == ["meta.json", "tokenizer.json"]


def _prepare_cmd(src: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "gqa_sweep.data.cli", "--quiet", "data=text", f"data.path={src}",
            "data.tokenizer=byte", f"data.cache_dir={cache}", "data.shard_tokens=20000"]


def test_kill_9_then_rerun_gives_byte_identical_shards(tmp_path):
    src = corpus(tmp_path / "c", 1500)  # ~0.55 MB: about 30 shards of 20,000 tokens
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GQA_PREPARE_BATCH_BYTES": "8192"}
    ref = subprocess.run(_prepare_cmd(src, tmp_path / "ref"), env=env, capture_output=True, text=True, check=True)
    ref_dir = Path(json.loads(ref.stdout)["dir"])
    killed_dir = tmp_path / "killed" / ref_dir.name
    proc = subprocess.Popen(_prepare_cmd(src, tmp_path / "killed"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not len(list(killed_dir.glob("train-*.bin"))) >= 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the prepare finished before it could be killed"
    assert not (killed_dir / "meta.json").exists() and (killed_dir / "state.json").exists()
    partial = len(list(killed_dir.glob("*.bin")))
    assert 3 <= partial < len(digests(ref_dir))
    with pytest.raises(DataError):  # an unfinished prepare is never opened
        open_tokens({"path": str(killed_dir)})
    again = subprocess.run(_prepare_cmd(src, tmp_path / "killed"), env=env, capture_output=True, text=True,
                           check=True)
    assert json.loads(again.stdout)["dir"] == str(killed_dir)
    assert digests(killed_dir) == digests(ref_dir)
    assert json.loads((killed_dir / "meta.json").read_text())["shards"] == \
        json.loads((ref_dir / "meta.json").read_text())["shards"]
    assert not (killed_dir / "state.json").exists() and not list(killed_dir.glob(".*.partial"))


def test_gqa_prepare_cli_then_cache_hit_and_bad_input(tmp_path):
    src = corpus(tmp_path / "c", 30)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "gqa_sweep.data.cli", "data=text", f"data.path={src}", "data.tokenizer=char",
           f"results_dir={tmp_path / 'res'}"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    assert "encoding with char" in first.stderr and "wrote shard train-00000.bin" in first.stderr
    r1 = json.loads(first.stdout)
    assert r1["dir"].startswith(str(tmp_path / "res" / "cache")) and not r1["cache_hit"] and r1["documents"] == 30
    second = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
    assert second["cache_hit"] and second["dir"] == r1["dir"]
    bad = subprocess.run([*cmd[:4], f"data.path={tmp_path / 'missing'}"], env=env, capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (f"gqa-prepare: data.path={tmp_path / 'missing'} does not exist; pass an existing "
                                  "text file, directory or glob")


# ----------------------------------------------------------------------------------- foreign token files


def test_nanogpt_bins_train_without_conversion(tmp_path):
    import pickle

    from gqa_sweep.data import CorpusDataModule

    rng = np.random.default_rng(1)
    train, val = rng.integers(0, 65, 5000, dtype=np.uint16), rng.integers(0, 65, 800, dtype=np.uint16)
    train.tofile(tmp_path / "train.bin")
    val.tofile(tmp_path / "val.bin")
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 65, "itos": {}, "stoi": {}}, f)
    dm = CorpusDataModule(source="tokens", path=str(tmp_path), block_size=16, batch_size=4, max_steps=3,
                          tokenizer=None, vocab_size=None)
    dm.prepare()
    assert (dm.vocab_size_actual, dm.train_tokens, dm.val_tokens) == (65, 5000, 800)
    assert dm.name == f"tokens:{tmp_path}" and dm.tokenizer is None
    x, y = next(iter(dm.train_dataloader()))
    starts = dm.train_batches().starts(0)
    assert np.array_equal(x.numpy(), np.stack([train[s : s + 16] for s in starts]).astype(np.int64))
    assert np.array_equal(y.numpy(), np.stack([train[s + 1 : s + 17] for s in starts]).astype(np.int64))


def test_llmc_shards_are_read_in_place(tmp_path):
    def llmc(path: Path, ids: np.ndarray) -> None:
        header = np.zeros(256, np.int32)
        header[:3] = 20240520, 1, len(ids)
        path.write_bytes(header.tobytes() + ids.astype(np.uint16).tobytes())

    llmc(tmp_path / "fineweb_val_000000.bin", np.arange(300))
    llmc(tmp_path / "fineweb_train_000001.bin", np.arange(1000))
    llmc(tmp_path / "fineweb_train_000002.bin", np.arange(1000, 1500))
    c = open_tokens({"path": str(tmp_path / "fineweb_*.bin")})
    assert c.vocab_size == 50257 and len(c.train) == 1500 and len(c.val) == 300
    assert c.train[995:1005].tolist() == list(range(995, 1005))
    assert inspect(tmp_path / "fineweb_val_000000.bin").offset == LLMC_HEADER_BYTES
    broken = tmp_path / "fineweb_train_000002.bin"
    broken.write_bytes(broken.read_bytes()[:-2])
    with pytest.raises(DataError, match="truncated or foreign"):
        check_data({"source": "tokens", "path": str(tmp_path), "block_size": 8, "batch_size": 2, "val_batches": 1})


def test_prepared_shards_open_as_tokens(tmp_path):
    out = prepare({"source": "text", "path": str(corpus(tmp_path / "c", 40)), "tokenizer": "byte",
                   "cache_dir": str(tmp_path / "cache")}, QUIET)
    c = open_tokens({"path": str(out)})
    p = open_prepared(out)
    assert c.vocab_size == 257 and np.array_equal(c.train[:], p.train[:]) and c.tokenizer.delimiter == 256


# -------------------------------------------------------------------------------------------- tokenizers


def make_tokenizer_json(path: Path, texts: list[str]) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tok.save(str(path))
    return path


def test_tokenizer_json_file_with_its_own_eos(tmp_path):
    src = corpus(tmp_path / "c", 40)
    tj = make_tokenizer_json(tmp_path / "tokenizer.json", [p.read_text() for p in src.iterdir()])
    d = {"source": "text", "path": str(src), "tokenizer": str(tj), "cache_dir": str(tmp_path / "cache")}
    check_data({**d, "block_size": 8, "batch_size": 2, "val_batches": 1})
    c = open_prepared(prepare(d, QUIET))
    eos = c.tokenizer.tok.token_to_id("</s>")
    assert c.meta["delimiter"]["id"] == eos and c.meta["delimiter"]["token"] == "</s>"
    assert c.vocab_size == 300 and c.meta["dtype"] == "uint16"
    assert int((c.train[:] == eos).sum()) + int((c.val[:] == eos).sum()) == 40
    assert c.meta["tokenizer"]["sha256"] == [hashlib.sha256(tj.read_bytes()).hexdigest()]
    from gqa_sweep.data.prepare import is_val

    first = sorted(src.iterdir())[next(i for i in range(40) if not is_val(i, 0.1))].read_text()
    assert c.tokenizer.decode(c.train[: len(c.tokenizer.encode(first))]) == first


def ranks_file(path: Path, merges: list[bytes]) -> Path:
    ranks = [bytes([b]) for b in range(256)] + merges
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(ranks)))
    return path


def test_tiktoken_local_rank_file_and_its_hf_export(tmp_path):
    from gqa_sweep.data.tokenizer_export import hf_tokenizer
    from gqa_sweep.data.tokenizers import load_tiktoken

    f = ranks_file(tmp_path / "mini.tiktoken", [b"th", b"the", b" the", b"er", b"ke", b"ker"])
    tok = load_tiktoken(f"tiktoken:{f}")
    assert tok.vocab_size == 263 and tok.delimiter == 262 and tok.delimiter_kind == "eot"
    text = "the kernel: the kerker\nThe  end 🙂"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and ids[0] == 257 and 258 in ids  # "the", " the": merges applied
    assert tok.encode_batch([text, "other"]) == [ids, tok.encode("other")]
    assert hf_tokenizer(tok).encode(text).ids == ids  # the export carries the same ids
    out = prepare({"source": "text", "path": str(corpus(tmp_path / "c", 30)), "tokenizer": f"tiktoken:{f}",
                   "cache_dir": str(tmp_path / "cache")}, QUIET)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["delimiter"]["id"] == 262 and meta["tokenizer"]["sha256"] == [hashlib.sha256(f.read_bytes()).hexdigest()]


def test_uncached_tokenizers_fail_at_once_saying_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tt"))
    base = {"source": "shakespeare", "block_size": 8, "batch_size": 2, "val_batches": 1}
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        check_data({**base, "tokenizer": "meta-llama/Meta-Llama-3-8B"})
    assert str(e.value) == (
        f"data.tokenizer=meta-llama/Meta-Llama-3-8B is not in the local HF cache "
        f"({tmp_path / 'hf' / 'hub' / 'models--meta-llama--Meta-Llama-3-8B'}); on a machine with a network run "
        "`hf download meta-llama/Meta-Llama-3-8B tokenizer.json tokenizer_config.json` and copy the cache here, or "
        "pass data.tokenizer=/path/to/tokenizer.json")
    with pytest.raises(DataError) as e:
        check_data({**base, "tokenizer": "tiktoken:cl100k_base"})
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    assert str(e.value) == (
        f"data.tokenizer=tiktoken:cl100k_base is not in tiktoken's cache: download {url} on a machine with a "
        f"network and put it at {tmp_path / 'tt' / hashlib.sha1(url.encode()).hexdigest()} (TIKTOKEN_CACHE_DIR), "
        "or pass data.tokenizer=tiktoken:/path/to/cl100k_base.tiktoken")
    assert time.perf_counter() - t0 < 10  # no network attempt (the machine has none: it would hang)
    with pytest.raises(DataError, match=r"^data.tokenizer=/no/such/tokenizer.json does not exist; pass a"):
        check_data({**base, "tokenizer": "/no/such/tokenizer.json"})
    with pytest.raises(DataError, match=r"^data.tokenizer=tiktoken:nope is not a tiktoken encoding; use one of"):
        check_data({**base, "tokenizer": "tiktoken:nope"})


def test_jsonl_text_field_is_checked_before_torch(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"content": "a"}\n')
    with pytest.raises(DataError) as e:
        check_data({"source": "text", "path": str(f), "block_size": 8, "batch_size": 2, "val_batches": 1})
    assert str(e.value) == (f"data.text_field=text is not a field of {f} (first row's keys: content); "
                            "set data.text_field")


def test_mqar_checks_are_torch_free():
    from gqa_sweep.data.mqar import check_mqar

    with pytest.raises(DataError) as e:
        check_mqar({"seq_len": 64, "num_kv_pairs": 4, "block_size": 32})
    assert str(e.value) == ("data.block_size=32 is shorter than the longest MQAR segment (64 tokens); "
                            "set data.block_size=64")
    with pytest.raises(DataError, match="seq_len=63 is odd"):
        check_data({"source": "mqar", "seq_len": 63, "block_size": 64})


def test_a_cached_hub_tokenizer_loads_offline(tmp_path, monkeypatch):
    from gqa_sweep.data.tokenizers import load_named

    hub = tmp_path / "hub"
    snap = hub / "models--org--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    make_tokenizer_json(snap / "tokenizer.json", ["some text to train on\n" * 50])
    (snap / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>"}))
    (hub / "models--org--tiny" / "refs").mkdir()
    (hub / "models--org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    tok = load_named("org/tiny")
    assert tok.delimiter == tok.tok.token_to_id("</s>") and tok.delimiter_kind == "eot"
    assert tok.decode(tok.encode("some text")) == "some text"


def test_a_truncated_shard_in_the_cache_is_refused(tmp_path):
    from gqa_sweep.data import CorpusDataModule

    kw = {"source": "text", "path": str(corpus(tmp_path / "c", 40)), "tokenizer": "byte",
          "cache_dir": str(tmp_path / "cache"), "block_size": 8, "progress": False}
    dm = CorpusDataModule(**kw)
    dm.prepare()
    shard = dm.cache_path / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-6])
    with pytest.raises(DataError, match=r"train-00000.bin is truncated or foreign \(\d+ bytes, its header says \d+\)"):
        CorpusDataModule(**kw).prepare()


def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_log(caplog):
    import io
    import logging

    caplog.set_level(logging.INFO, logger="gqa_sweep.data")

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, log = Tty(), io.StringIO()
    for stream in (tty, log):
        p = Progress(stream=stream)
        p.start("encoding with byte", total=4_000_000)
        p.update(2_000_000, "10 documents")
        p.end()
    assert "\rencoding with byte [###############...............] 2 of 4 MB" in tty.getvalue()
    lines = [r.getMessage() for r in caplog.records]  # a log (here pytest's handler) gets lines, never a bar
    assert "encoding with byte (4.0 MB)" in lines and any(m.startswith("encoding with byte: 2 of 4 MB") for m in lines)
    assert "\r" not in log.getvalue() and not any("\r" in m for m in lines)

"""CorpusDataModule: shipped corpus, position and document splits, step batches, DDP, resume, cache, messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from gqa_sweep.data import CorpusDataModule, DataError, load_shakespeare
from gqa_sweep.data import hf as hf_data
from gqa_sweep.data import text as text_data
from gqa_sweep.data.loader import step_starts
from gqa_sweep.data.prepare import is_val

SHAKESPEARE_CHARS = 1_115_394
UNICODE_TEXT = "Größe naïve café — 日本語 テキスト.\n\tTabs,  spaces\n\nand lines: ÆØÅ ∑ √ 🙂\n" * 40


def dm_(tmp_path: Path, **kw) -> CorpusDataModule:
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("progress", False)
    dm = CorpusDataModule(**kw)
    dm.prepare()
    return dm


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def docs_dir(root: Path, n: int = 40) -> list[str]:
    """n small documents doc-000.txt ... with distinct words."""
    texts = [f"document {i}: " + " ".join(f"w{i}x{j}" for j in range(30)) + "\n" for i in range(n)]
    for i, t in enumerate(texts):
        write(root / f"doc-{i:03d}.txt", t)
    return texts


def batches(loader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    it = iter(loader)
    return [next(it) for _ in range(n)]


# ---------------------------------------------------------------------------------------- shipped corpus


def test_shipped_corpus_keeps_the_position_split(tmp_path):
    text = load_shakespeare()
    assert len(text.encode("utf-8")) == SHAKESPEARE_CHARS and len(text) == SHAKESPEARE_CHARS
    dm = dm_(tmp_path, block_size=64, batch_size=4)
    assert (dm.name, dm.tokenizer_label, dm.vocab_size_actual) == ("shakespeare", "char", 65)
    cut = int(SHAKESPEARE_CHARS * 0.9)  # no document structure: the same cut by position as before shards
    assert (dm.train_tokens, dm.val_tokens) == (cut, SHAKESPEARE_CHARS - cut)
    assert dm.decode(dm.val_data[:]) == text[cut:]
    assert dm.decode(dm.train_data[:100]) == text[:100]
    assert dm.meta["delimiter"]["id"] is None and dm.meta["split"]["by"] == "position"


# ---------------------------------------------------------------------------------------------- batches


def test_train_batches_depend_on_seed_only(tmp_path):
    kw = {"block_size": 32, "batch_size": 8, "max_steps": 6}
    a = batches(dm_(tmp_path, seed=1, **kw).train_dataloader(), 6)
    b = batches(dm_(tmp_path, seed=1, **kw).train_dataloader(), 6)
    c = batches(dm_(tmp_path, seed=2, **kw).train_dataloader(), 6)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not any(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_a_batch_is_a_pure_function_of_seed_and_step(tmp_path):
    dm = dm_(tmp_path, block_size=16, batch_size=4, max_steps=3, seed=7)
    loader = dm.train_dataloader()
    assert len(loader) == 3
    got = batches(loader, 3)
    high = dm.train_tokens - 16
    for step, (x, y) in enumerate(got):
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        starts = step_starts(7, step, 4, high)  # nothing but (seed, step): no precomputed offsets
        ref = np.stack([dm.train_data[o : o + 17] for o in starts])
        assert torch.equal(x, torch.from_numpy(ref[:, :-1])) and torch.equal(y, torch.from_numpy(ref[:, 1:]))
    assert int(step_starts(7, 10**9, 10_000, high).max()) < high  # a far step, computed directly


def test_ddp_ranks_split_the_single_device_batches(tmp_path):
    # Step s under DDP (W ranks, batch B) trains on the windows of step s on one device with batch B*W.
    single = batches(dm_(tmp_path, block_size=8, batch_size=4, max_steps=3).train_dataloader(), 3)
    per_rank = []
    for rank in range(2):
        dm = dm_(tmp_path, block_size=8, batch_size=2, max_steps=3)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        loader = dm.train_dataloader()
        assert len(loader) == 3
        # Lightning keeps a DistributedSampler (it would swap any other for a shuffling one): every step, in order
        assert isinstance(loader.sampler, DistributedSampler) and list(loader.sampler) == [0, 1, 2]
        per_rank.append(batches(loader, 3))
    for s, (x, _) in enumerate(single):
        assert torch.equal(x[0::2], per_rank[0][s][0]) and torch.equal(x[1::2], per_rank[1][s][0])


def test_train_loader_state_restarts_at_the_saved_step(tmp_path):
    dm = dm_(tmp_path, block_size=8, batch_size=2, max_steps=6)
    loader = dm.train_dataloader()
    first = [x for x, _ in loader]
    assert loader.state_dict() == {"batches": 6}
    it = iter(loader)
    for _ in range(4):
        next(it)
    assert loader.state_dict() == {"batches": 4}
    fresh = dm.train_dataloader()
    fresh.load_state_dict({"batches": 4})
    resumed = [x for x, _ in fresh]
    assert len(resumed) == 2 and all(torch.equal(a, b) for a, b in zip(resumed, first[4:]))
    assert fresh.state_dict() == {"batches": 6}
    again = [x for x, _ in fresh]  # the next pass starts from the first batch again
    assert len(again) == 6 and all(torch.equal(a, b) for a, b in zip(again, first))


def test_worker_processes_read_the_same_batches(tmp_path):
    dm = dm_(tmp_path, block_size=8, batch_size=2, max_steps=4)
    ref = [x for x, _ in dm.train_dataloader()]
    dm.num_workers = 2  # each worker opens the memmaps itself (the stream pickles as paths)
    got = [x for x, _ in dm.train_dataloader()]
    assert len(got) == 4 and all(torch.equal(a, b) for a, b in zip(ref, got))


def _lightning_batches(tmp_path: Path, steps: int, resume: Path | None = None) -> list[list[int]]:
    import lightning as L

    from gqa_sweep.train.module import LMModule

    seen: list[list[int]] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch[0][:, 0].tolist())

    dm = CorpusDataModule(block_size=8, batch_size=2, max_steps=6, val_batches=1, cache_dir=str(tmp_path / "cache"),
                          progress=False)
    dm.prepare()
    model = {"vocab_size": dm.vocab_size_actual, "block_size": 8, "n_layers": 1, "d_model": 16, "n_heads": 2, "n_kv_heads": 1}
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, callbacks=[Record(), ckpt],
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(LMModule(model, max_steps=6, warmup_steps=1), datamodule=dm, ckpt_path=resume)
    return seen


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*", "ignore:Checkpoint directory .* exists and is not empty")
def test_resumed_lightning_run_sees_the_uninterrupted_batches(tmp_path):
    full = _lightning_batches(tmp_path / "full", 6)
    part = _lightning_batches(tmp_path / "part", 3)
    part += _lightning_batches(tmp_path / "part", 6, resume=tmp_path / "part" / "ckpt" / "last.ckpt")
    assert len(full) == 6 and part == full


def test_val_split_and_prompts_fixed_across_seeds(tmp_path):
    kw = {"block_size": 32, "batch_size": 4, "val_batches": 3}
    d1, d2 = dm_(tmp_path, seed=0, **kw), dm_(tmp_path, seed=123, **kw)
    v1, v2 = list(d1.val_dataloader()), list(d2.val_dataloader())
    assert len(v1) == 3
    for (x1, y1), (x2, y2) in zip(v1, v2):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    offsets = d1.val_offsets()
    assert offsets[0] == 0 and offsets[-1] == d1.val_tokens - 33  # evenly spaced, last window ends the split
    x_last, y_last = v1[-1][0][-1], v1[-1][1][-1]
    assert d1.decode(y_last) == d1.decode(d1.val_data[d1.val_tokens - 32 :])
    assert torch.equal(x_last[1:], y_last[:-1])
    p1, p2 = d1.sample_prompt(5, 20), d2.sample_prompt(5, 20)
    assert p1.shape == (5, 20) and p1.dtype == torch.int64 and torch.equal(p1, p2)
    assert d1.decode(p1[0]) == d1.decode(d1.val_data[:20])


# ---------------------------------------------------------------------------------------- document split


def test_val_split_is_by_document_with_a_delimiter_after_each(tmp_path):
    texts = docs_dir(tmp_path / "docs")
    dm = dm_(tmp_path, source="text", path=str(tmp_path / "docs"), tokenizer="byte", block_size=8)
    assert dm.name == f"text:{tmp_path / 'docs'}" and dm.vocab_size_actual == 257  # 256 bytes + <|endoftext|>
    assert dm.meta["split"]["by"] == "document" and dm.meta["delimiter"]["id"] == 256
    val_ids = [i for i in range(len(texts)) if is_val(i, 0.1)]
    assert 0 < len(val_ids) < len(texts)

    def docs(stream) -> list[str]:
        ids = stream[:]
        return [bytes(p[:-1].tolist()).decode() for p in np.split(ids, np.flatnonzero(ids == 256) + 1) if len(p)]

    # every document whole, in order, each followed by the delimiter (the stream ends with one)
    assert docs(dm.val_data) == [texts[i] for i in val_ids] and dm.val_data[:][-1] == 256
    assert docs(dm.train_data) == [t for i, t in enumerate(texts) if i not in val_ids]
    shards = dm.meta["shards"]
    assert sum(s["docs"] for s in shards["val"]) == len(val_ids)
    assert sum(s["docs"] for s in shards["train"]) == len(texts) - len(val_ids)
    # a grown corpus keeps every old document on its side
    write(tmp_path / "docs" / "doc-999.txt", "a new document\n")
    grown = dm_(tmp_path, source="text", path=str(tmp_path / "docs"), tokenizer="byte", block_size=8)
    assert not grown.cache_hit and docs(grown.val_data)[: len(val_ids)] == [texts[i] for i in val_ids]


def test_jsonl_rows_are_documents(tmp_path):
    rows = [{"text": f"row {i} " * 5, "id": i} for i in range(30)]
    f = tmp_path / "rows.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dm = dm_(tmp_path, source="text", path=str(f), tokenizer="char", block_size=4)
    assert dm.meta["documents"] == 30 and dm.meta["split"]["by"] == "document"
    eot = dm.meta["delimiter"]["id"]
    assert eot == dm.vocab_size_actual - 1
    n_val = sum(is_val(i, 0.1) for i in range(30))
    assert int((dm.val_data[:] == eot).sum()) == n_val and int((dm.train_data[:] == eot).sum()) == 30 - n_val


def test_parquet_rows_and_text_field(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"content": [f"parquet row {i}\n" for i in range(25)]}), f)
    with pytest.raises(DataError) as e:
        CorpusDataModule(source="text", path=str(f), cache_dir=str(tmp_path / "c"))
    assert str(e.value) == f"data.text_field=text is not a column of {f} (columns: content); set data.text_field"
    dm = dm_(tmp_path, source="text", path=str(f), text_field="content", tokenizer="byte", block_size=4)
    assert dm.meta["documents"] == 25
    got = bytes(x for x in np.concatenate([dm.train_data[:], dm.val_data[:]]).tolist() if x != 256).decode()
    assert sorted(got.splitlines()) == sorted(f"parquet row {i}" for i in range(25))


# -------------------------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("tokenizer,label", [("char", "char"), ("byte", "byte"), ("bpe", "bpe-300")])
def test_encode_decode_round_trip(tmp_path, tokenizer, label):
    path = write(tmp_path / "u.txt", UNICODE_TEXT)
    dm = dm_(tmp_path, source="text", path=str(path), tokenizer=tokenizer, vocab_size=300, block_size=8)
    assert dm.tokenizer_label == label and dm.name == f"text:{path}"
    probe = "naïve 日本語 🙂\n\tTabs"
    assert dm.decode(dm.encode(probe)) == probe
    assert dm.decode(torch.tensor(dm.encode(UNICODE_TEXT))) == UNICODE_TEXT
    assert dm.decode(dm.train_data[:]) + dm.decode(dm.val_data[:]) == UNICODE_TEXT  # one file: cut by position
    if tokenizer == "byte":
        assert dm.vocab_size_actual == 256 and dm.encode("é") == [0xC3, 0xA9]
    if tokenizer == "char":
        assert dm.vocab_size_actual == len(set(UNICODE_TEXT))


def test_bpe_vocab_size_honoured(tmp_path):
    dm = dm_(tmp_path, tokenizer="bpe", vocab_size=300, block_size=64)
    assert dm.vocab_size_actual == 300 and dm.tokenizer_label == "bpe-300"
    assert int(dm.train_data[:].max()) < 300 and int(dm.val_data[:].max()) < 300
    assert dm.train_tokens + dm.val_tokens < SHAKESPEARE_CHARS * 0.8  # merges compress the text
    assert dm.decode(dm.train_data[:]) + dm.decode(dm.val_data[:]) == load_shakespeare()


def test_bpe_trains_on_a_bounded_sample_of_the_train_split(tmp_path):
    # The val tenth repeats a word that never occurs in the train part: BPE must not have merged it.
    path = write(tmp_path / "t.txt", "abc " * 900 + "qzv " * 100)
    dm = dm_(tmp_path, source="text", path=str(path), tokenizer="bpe", vocab_size=400, block_size=8)
    assert len(dm.encode("abc")) == 1 and len(dm.encode("qzv")) == 3
    # with a sample of the first 2,000 bytes, a word only in later train text is not merged either
    path2 = write(tmp_path / "s.txt", "abc " * 500 + "mno " * 1000 + "xyz " * 50)
    small = dm_(tmp_path, source="text", path=str(path2), tokenizer="bpe", vocab_size=400, block_size=8,
                bpe_sample_bytes=2000)
    assert len(small.encode("abc")) == 1 and len(small.encode("mno")) == 3


def test_char_tokenizer_rejects_unknown_character(tmp_path):
    dm = dm_(tmp_path, block_size=8)
    with pytest.raises(DataError, match=r"^character 'é' is not in the char vocabulary of this corpus; "
                                        r"use data.tokenizer=byte or bpe to encode any text$"):
        dm.encode("café")


# ------------------------------------------------------------------------------------------------- cache


def test_cache_hit_reads_no_text(tmp_path, monkeypatch):
    from gqa_sweep.data import sources

    path = write(tmp_path / "c.txt", UNICODE_TEXT)
    kw = {"source": "text", "path": str(path), "tokenizer": "bpe", "vocab_size": 280, "block_size": 8}
    first = dm_(tmp_path, **kw)
    assert not first.cache_hit
    files = sorted(p.name for p in first.cache_path.iterdir())
    assert files == ["meta.json", "tokenizer.json", "train-00000.bin", "val-00000.bin"]
    mtimes = {p: p.stat().st_mtime_ns for p in first.cache_path.iterdir()}

    def no_reading(self, cursor=None):
        raise AssertionError("read the text despite a cache entry")

    monkeypatch.setattr(sources.TextSource, "pieces", no_reading)
    second = dm_(tmp_path, **kw)
    assert second.cache_hit and second.cache_path == first.cache_path
    assert (second.train_data[:] == first.train_data[:]).all() and (second.val_data[:] == first.val_data[:]).all()
    assert second.encode("naïve 🙂") == first.encode("naïve 🙂")
    assert {p: p.stat().st_mtime_ns for p in first.cache_path.iterdir()} == mtimes
    monkeypatch.undo()

    changed = [dict(kw, vocab_size=290), dict(kw, tokenizer="byte"), dict(kw, val_fraction=0.2),
               dict(kw, bpe_sample_bytes=1000), dict(kw, shard_tokens=1000)]
    paths = {first.cache_path}
    for other in changed:
        dm = dm_(tmp_path, **other)
        assert not dm.cache_hit and dm.cache_path not in paths
        paths.add(dm.cache_path)
    write(path, UNICODE_TEXT + "more")  # new size and mtime: new key
    assert not dm_(tmp_path, **kw).cache_hit
    assert not [p for p in (tmp_path / "cache").rglob(".*") if not p.name.endswith(".lock")]  # no temp files


# ---------------------------------------------------------------------------------------- text sources


def test_text_directory_glob_suffixes_and_names(tmp_path):
    root = tmp_path / "corpus"
    write(root / "b.txt", "bee")
    write(root / "a" / "z.txt", "zed")
    write(root / "empty.txt", "")
    write(root / "README", "no suffix")  # a plain file without an extension is text too
    assert text_data.load_text(str(root)) == "no suffix\nzed\nbee"
    assert text_data.load_text(str(root), suffixes=[".txt"]) == "zed\nbee"
    assert text_data.load_text(str(root / "**" / "*.txt")) == "zed\nbee"
    glob = str(root / "**" / "*.txt")
    assert CorpusDataModule(source="text", path=glob).name == f"text:{glob}"  # the path as the user gave it


def test_encoding_errors_replace_counts_the_bytes(tmp_path):
    docs_dir(tmp_path / "d", 20)
    (tmp_path / "d" / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        dm_(tmp_path, source="text", path=str(tmp_path / "d"), tokenizer="byte", block_size=4)
    assert "latin1.txt is not UTF-8 (invalid byte at offset 3); pass data.encoding_errors=replace" in str(e.value)
    dm = dm_(tmp_path, source="text", path=str(tmp_path / "d"), tokenizer="byte", block_size=4,
             encoding_errors="replace")
    assert dm.meta["replaced_bytes"] == 2


def _bad_utf8(tmp_path: Path) -> str:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    return str(tmp_path / "latin1.txt")


def _empty(tmp_path: Path) -> str:
    write(tmp_path / "e" / "one.txt", "")
    write(tmp_path / "e" / "two.txt", "")
    return str(tmp_path / "e")


def _no_txt(tmp_path: Path) -> str:
    write(tmp_path / "d" / "x.md", "text")
    return str(tmp_path / "d")


HINT = "pass an existing text file, directory or glob"


@pytest.mark.parametrize(
    "make_path,kw,message",
    [
        (lambda t: str(t / "nope.txt"), {}, "data.path={p} does not exist; " + HINT),
        (lambda t: str(t / "*.nothing"), {}, "data.path={p} matches no files; " + HINT),
        (_no_txt, {"suffixes": [".txt"]},
         "data.path={p} is a directory with no files ending in .txt; " + HINT + " or change data.suffixes"),
        (_empty, {}, "data.path={p}: the file(s) are empty; " + HINT + " with some text in it"),
        (_bad_utf8, {}, ("data.path={p}: {p} is not UTF-8 (invalid byte at offset 3); pass "
                        "data.encoding_errors=replace, convert it (iconv -t UTF-8) or leave it out of data.path")),
    ],
)
def test_text_source_errors(tmp_path, make_path, kw, message):
    p = make_path(tmp_path)
    with pytest.raises(DataError) as e:
        dm_(tmp_path, source="text", path=p, **kw)
    assert str(e.value) == message.format(p=p)


def test_block_size_too_large(tmp_path):
    path = write(tmp_path / "small.txt", "abcdefghij" * 10)  # 90 train / 10 val chars
    assert dm_(tmp_path, source="text", path=str(path), tokenizer="char", block_size=9).val_tokens == 10
    with pytest.raises(DataError) as e:
        dm_(tmp_path, source="text", path=str(path), tokenizer="char", block_size=10)
    assert str(e.value) == ("data.block_size=10 is larger than the corpus allows (90 train / 10 val tokens with "
                            "data.val_fraction=0.1); use data.block_size<=9 or more text")
    tiny = write(tmp_path / "tiny.txt", "abcdefghi")  # 8 train / 1 val chars: no window fits
    with pytest.raises(DataError) as e:
        dm_(tmp_path, source="text", path=str(tiny), tokenizer="char", block_size=1)
    assert str(e.value) == ("data.block_size=1 is larger than the corpus allows (8 train / 1 val tokens with "
                            "data.val_fraction=0.1); use more text")


def test_too_few_documents_for_the_val_fraction(tmp_path):
    write(tmp_path / "two" / "a.txt", "first")
    write(tmp_path / "two" / "b.txt", "second")
    with pytest.raises(DataError) as e:
        dm_(tmp_path, source="text", path=str(tmp_path / "two"), tokenizer="byte", block_size=1, val_fraction=0.001)
    assert not is_val(0, 0.001) and not is_val(1, 0.001)
    assert str(e.value) == ("data.val_fraction=0.001 puts none of the 2 documents in val; raise data.val_fraction "
                            "or add documents")


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"source": "web"}, ("data.source=web is unknown; use one of shakespeare, text, hf, tokens, mqar "
                             "(data=text, data=hf, ...)")),
        ({"val_fraction": 0.0}, "data.val_fraction=0.0 must be in (0, 1); e.g. data.val_fraction=0.1"),
        ({"val_fraction": 1.0}, "data.val_fraction=1.0 must be in (0, 1); e.g. data.val_fraction=0.1"),
        ({"batch_size": 0}, "data.batch_size=0 must be a positive integer"),
        ({"block_size": -1}, "data.block_size=-1 must be a positive integer"),
        ({"shard_tokens": 0}, "data.shard_tokens=0 must be a positive integer"),
        ({"encoding_errors": "ignore"}, "data.encoding_errors=ignore is unknown; use strict or replace"),
        ({"tokenizer": "bpe", "vocab_size": 256},
         "data.vocab_size=256 is too small for byte-level BPE (256 bytes + merges); use data.vocab_size>=257"),
        ({"tokenizer": "bpe", "vocab_size": 70_000, "dtype": "uint16"},
         ("data.vocab_size=70000 does not fit data.dtype=uint16 (<= 65,536 ids); use data.dtype=uint32 or a smaller "
         "vocabulary")),
        ({"source": "text"}, "data.path is required for data=text; " + HINT),
        ({"source": "hf"},
         "data.name is required for data=hf; e.g. data.name=Salesforce/wikitext data.config=wikitext-2-raw-v1"),
        ({"source": "tokens"},
         "data.path is required for data=tokens; pass a directory with train.bin / val.bin or shards"),
    ],
)
def test_bad_settings_fail_at_construction(kw, message):
    with pytest.raises(DataError) as e:
        CorpusDataModule(**kw)
    assert str(e.value) == message


def test_use_before_prepare_is_an_error():
    with pytest.raises(RuntimeError, match="prepare"):
        CorpusDataModule().encode("a")


def test_config_checks_import_no_torch():
    code = ("import gqa_sweep.data.spec, gqa_sweep.data.prepare, gqa_sweep.data.cli, gqa_sweep.data.tokens, sys;"
            "from gqa_sweep.data import DataError;"
            "from gqa_sweep.data.spec import check_data;"
            "check_data({'source': 'shakespeare', 'block_size': 8, 'batch_size': 2, 'val_batches': 1});"
            "check_data({'source': 'mqar', 'block_size': 64, 'batch_size': 2});"
            "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'torch imported'")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------------------- Hugging Face


def test_hf_unreachable_fails_fast(tmp_path, monkeypatch):
    if hf_data._hub_reachable():
        pytest.skip("the Hugging Face Hub is reachable from here")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        CorpusDataModule(source="hf", name="wikitext", config="wikitext-2-raw-v1")
    assert time.perf_counter() - t0 < 10
    assert str(e.value) == (
        "hf:wikitext could not be reached (no connection to the Hugging Face Hub and not in the local HF cache); "
        "download it where there is a network (HF_HOME) or use a local file instead: data=text data.path=FILE"
    )


@pytest.fixture
def hf_cached(tmp_path, monkeypatch):
    """A dataset 'tinycorpus' present only in a private HF datasets cache; the Hub treated as unreachable."""
    import datasets

    rows = "".join(f"row number {i}\n" for i in range(30))
    src_file = write(tmp_path / "rows.txt", rows)
    datasets.load_dataset("text", data_files=str(src_file), split="train", cache_dir=str(tmp_path / "build"))
    built = next((tmp_path / "build" / "text").glob("default-*/0.0.0/*/"))
    entry = tmp_path / "hf" / "tinycorpus" / "default" / "0.0.0" / built.name
    entry.mkdir(parents=True)
    shutil.copy(built / "text-train.arrow", entry / "tinycorpus-train.arrow")
    info = json.loads((built / "dataset_info.json").read_text())
    info["dataset_name"] = info["splits"]["train"]["dataset_name"] = "tinycorpus"
    (entry / "dataset_info.json").write_text(json.dumps(info))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_data, "_hub_reachable", lambda: False)
    return "tinycorpus"


def test_hf_cached_dataset_works_offline(tmp_path, hf_cached):
    dm = CorpusDataModule(source="hf", name=hf_cached, tokenizer="char", block_size=1, val_fraction=0.3,
                          cache_dir=str(tmp_path / "c"), progress=False)
    assert dm.name == "hf:tinycorpus"
    dm.prepare()
    assert dm.meta["documents"] == 30 and dm.meta["source"]["fingerprint"]
    eot = dm.meta["delimiter"]["id"]
    n_val = sum(is_val(i, 0.3) for i in range(30))
    assert int((dm.val_data[:] == eot).sum()) == n_val
    with pytest.raises(DataError) as e:
        hf_data.load_hf(hf_cached, None, "train", "content")
    assert str(e.value) == "data.text_field=content is not a column of hf:tinycorpus; columns: text"
    assert os.environ.get("HF_HUB_OFFLINE") is None  # offline mode was scoped to the call
    import datasets

    assert datasets.config.HF_HUB_OFFLINE is False

"""CorpusDataModule: shipped corpus, fixed split and batches, tokenizers, cache, error messages, HF offline."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gqa_sweep.data import common, hf as hf_data, text as text_data, tokenizers
from gqa_sweep.data import CorpusDataModule, DataError, load_shakespeare

SHAKESPEARE_CHARS = 1_115_394
UNICODE_TEXT = "Größe naïve café — 日本語 テキスト.\n\tTabs,  spaces\n\nand lines: ÆØÅ ∑ √ 🙂\n" * 40


def dm_(tmp_path: Path, **kw) -> CorpusDataModule:
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    dm = CorpusDataModule(**kw)
    dm.prepare()
    return dm


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def batches(loader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    it = iter(loader)
    return [next(it) for _ in range(n)]


# ---------------------------------------------------------------------------------------- shipped corpus


def test_shipped_corpus_and_char_split(tmp_path):
    text = load_shakespeare()
    assert len(text.encode("utf-8")) == SHAKESPEARE_CHARS and len(text) == SHAKESPEARE_CHARS
    dm = dm_(tmp_path, block_size=64, batch_size=4)
    assert (dm.name, dm.tokenizer_label, dm.vocab_size_actual) == ("shakespeare", "char", 65)
    cut = int(SHAKESPEARE_CHARS * 0.9)
    assert (dm.train_tokens, dm.val_tokens) == (cut, SHAKESPEARE_CHARS - cut)
    assert dm.decode(dm.val_data) == text[cut:]
    assert dm.decode(dm.train_data[:100]) == text[:100]


# ---------------------------------------------------------------------------------------------- batches


def test_train_batches_depend_on_seed_only(tmp_path):
    kw = dict(block_size=32, batch_size=8, max_steps=6)
    a = batches(dm_(tmp_path, seed=1, **kw).train_dataloader(), 6)
    b = batches(dm_(tmp_path, seed=1, **kw).train_dataloader(), 6)
    c = batches(dm_(tmp_path, seed=2, **kw).train_dataloader(), 6)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not any(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_windows_are_shifted_slices_of_the_train_split(tmp_path):
    dm = dm_(tmp_path, block_size=16, batch_size=4, max_steps=3, seed=7)
    loader = dm.train_dataloader()
    assert len(loader) == 3
    x, y = next(iter(loader))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    o = int(dm.train_offsets()[0])
    ref = torch.from_numpy(dm.train_data[o : o + 17].astype("int64"))
    assert torch.equal(x[0], ref[:-1]) and torch.equal(y[0], ref[1:])
    assert int(dm.train_offsets().max()) <= dm.train_tokens - 17


def test_ddp_ranks_split_the_single_device_batches(tmp_path):
    # Step s under DDP (W ranks, batch B) trains on the windows of step s on one device with batch B*W.
    single = batches(dm_(tmp_path, block_size=8, batch_size=4, max_steps=3).train_dataloader(), 3)
    per_rank = []
    for rank in range(2):
        dm = dm_(tmp_path, block_size=8, batch_size=2, max_steps=3)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        loader = dm.train_dataloader()
        assert len(loader) == 3
        per_rank.append(batches(loader, 3))
    for s, (x, _) in enumerate(single):
        assert torch.equal(x[0::2], per_rank[0][s][0]) and torch.equal(x[1::2], per_rank[1][s][0])


def test_train_loader_state_restarts_at_the_saved_batch(tmp_path):
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


def _lightning_batches(tmp_path: Path, steps: int, resume: Path | None = None) -> list[list[int]]:
    import lightning as L

    from gqa_sweep.module import LMModule

    seen: list[list[int]] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch[0][:, 0].tolist())

    dm = CorpusDataModule(block_size=8, batch_size=2, max_steps=6, val_batches=1, cache_dir=str(tmp_path / "cache"))
    dm.prepare()
    model = dict(vocab_size=dm.vocab_size_actual, block_size=8, n_layers=1, d_model=16, n_heads=2, n_kv_heads=1)
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
    kw = dict(block_size=32, batch_size=4, val_batches=3)
    d1, d2 = dm_(tmp_path, seed=0, **kw), dm_(tmp_path, seed=123, **kw)
    v1, v2 = list(d1.val_dataloader()), list(d2.val_dataloader())
    assert len(v1) == 3
    for (x1, y1), (x2, y2) in zip(v1, v2):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    offsets = d1.val_offsets()
    assert offsets[0] == 0 and offsets[-1] == d1.val_tokens - 33  # evenly spaced, last window ends the split
    x_last, y_last = v1[-1][0][-1], v1[-1][1][-1]
    assert d1.decode(y_last) == d1.decode(d1.val_data[-32:])
    assert torch.equal(x_last[1:], y_last[:-1])
    p1, p2 = d1.sample_prompt(5, 20), d2.sample_prompt(5, 20)
    assert p1.shape == (5, 20) and p1.dtype == torch.int64 and torch.equal(p1, p2)
    assert d1.decode(p1[0]) == d1.decode(d1.val_data[:20])


# -------------------------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("tokenizer,label", [("char", "char"), ("byte", "byte"), ("bpe", "bpe-300")])
def test_encode_decode_round_trip(tmp_path, tokenizer, label):
    path = write(tmp_path / "u.txt", UNICODE_TEXT)
    dm = dm_(tmp_path, source="text", path=str(path), tokenizer=tokenizer, vocab_size=300, block_size=8)
    assert dm.tokenizer_label == label and dm.name == "text:u.txt"
    probe = "naïve 日本語 🙂\n\tTabs"
    assert dm.decode(dm.encode(probe)) == probe
    assert dm.decode(torch.tensor(dm.encode(UNICODE_TEXT))) == UNICODE_TEXT
    if tokenizer == "byte":
        assert dm.vocab_size_actual == 256 and dm.encode("é") == [0xC3, 0xA9]
    if tokenizer == "char":
        assert dm.vocab_size_actual == len(set(UNICODE_TEXT))


def test_bpe_vocab_size_honoured(tmp_path):
    dm = dm_(tmp_path, tokenizer="bpe", vocab_size=300, block_size=64)
    assert dm.vocab_size_actual == 300 and dm.tokenizer_label == "bpe-300"
    assert int(dm.train_data.max()) < 300 and int(dm.val_data.max()) < 300
    assert dm.train_tokens + dm.val_tokens < SHAKESPEARE_CHARS * 0.8  # merges compress the text
    assert dm.decode(dm.train_data) + dm.decode(dm.val_data) == load_shakespeare()


def test_corpus_chunks_end_at_newlines():
    text = "line one\nline two is longer\n\nno newline at the end"
    chunks = list(tokenizers.chunks(text, size=5))
    assert "".join(chunks) == text
    assert chunks == ["line one\n", "line two is longer\n", "\nno newline at the end"]


def test_bpe_trains_on_train_split_only(tmp_path):
    # The val tenth repeats a word that never occurs in the train part: BPE must not have merged it.
    path = write(tmp_path / "t.txt", "abc " * 900 + "qzv " * 100)
    dm = dm_(tmp_path, source="text", path=str(path), tokenizer="bpe", vocab_size=400, block_size=8)
    assert len(dm.encode("abc")) == 1
    assert len(dm.encode("qzv")) == 3


def test_char_tokenizer_rejects_unknown_character(tmp_path):
    dm = dm_(tmp_path, block_size=8)
    with pytest.raises(DataError, match=r"^character 'é' is not in the char vocabulary of this corpus; "
                                        r"use data.tokenizer=byte or bpe to encode any text$"):
        dm.encode("café")


# ------------------------------------------------------------------------------------------------- cache


def test_cache_hit_and_miss(tmp_path, monkeypatch):
    path = write(tmp_path / "c.txt", UNICODE_TEXT)
    kw = dict(source="text", path=str(path), tokenizer="bpe", vocab_size=280, block_size=8)
    first = dm_(tmp_path, **kw)
    assert not first.cache_hit
    files = sorted(p.name for p in first.cache_path.iterdir())
    assert files == ["meta.json", "tokenizer.json", "train.npy", "val.npy"]
    mtimes = {p: p.stat().st_mtime_ns for p in first.cache_path.iterdir()}

    def no_tokenize(self, corpus):
        raise AssertionError("re-tokenized despite a cache entry")

    monkeypatch.setattr(CorpusDataModule, "_tokenize", no_tokenize)
    second = dm_(tmp_path, **kw)
    assert second.cache_hit and second.cache_path == first.cache_path
    assert (second.train_data == first.train_data).all() and (second.val_data == first.val_data).all()
    assert second.encode("naïve 🙂") == first.encode("naïve 🙂")
    assert {p: p.stat().st_mtime_ns for p in first.cache_path.iterdir()} == mtimes
    second.prepare()  # idempotent: no reload
    monkeypatch.undo()

    changed = [dict(kw, vocab_size=290), dict(kw, tokenizer="byte"), dict(kw, val_fraction=0.2)]
    paths = {first.cache_path}
    for other in changed:
        dm = dm_(tmp_path, **other)
        assert not dm.cache_hit and dm.cache_path not in paths
        paths.add(dm.cache_path)
    write(path, UNICODE_TEXT + "more")  # new content: new key
    assert not dm_(tmp_path, **kw).cache_hit
    assert not list((tmp_path / "cache").glob(".*"))  # no temp dirs left behind


def test_cache_race_keeps_the_first_entry(tmp_path):
    final = tmp_path / "entry"
    assert common.atomic_dir(final, lambda d: (d / "meta.json").write_text("first"))
    assert not common.atomic_dir(final, lambda d: (d / "meta.json").write_text("second"))
    assert (final / "meta.json").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


# ---------------------------------------------------------------------------------------- text sources


def test_text_directory_and_glob_are_sorted_and_joined(tmp_path):
    root = tmp_path / "corpus"
    write(root / "b.txt", "bee")
    write(root / "a" / "z.txt", "zed")
    write(root / "empty.txt", "")
    write(root / "skip.md", "not me")
    assert text_data.load_text(str(root)) == "zed\nbee"
    assert text_data.load_text(str(root / "**" / "*.txt")) == "zed\nbee"
    assert text_data.load_text(str(root / "*.md")) == "not me"
    assert CorpusDataModule(source="text", path=str(root)).name == "text:corpus"


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


HINT = "pass an existing UTF-8 text file, directory or glob"


@pytest.mark.parametrize(
    "make_path,message",
    [
        (lambda t: str(t / "nope.txt"), "data.path={p} does not exist; " + HINT),
        (lambda t: str(t / "*.nothing"), "data.path={p} matches no files; " + HINT),
        (_no_txt, "data.path={p} is a directory with no *.txt files; " + HINT),
        (_empty, "data.path={p}: the file(s) are empty; " + HINT + " with some text in it"),
        (_bad_utf8, "data.path={p}: {p} is not UTF-8 (invalid byte at offset 3); convert it (iconv -t UTF-8) "
                    "or leave it out of data.path"),
    ],
)
def test_text_source_errors(tmp_path, make_path, message):
    p = make_path(tmp_path)
    with pytest.raises(DataError) as e:
        dm_(tmp_path, source="text", path=p)
    assert str(e.value) == message.format(p=p)


def test_block_size_too_large(tmp_path):
    path = write(tmp_path / "small.txt", "abcdefghij" * 10)  # 90 train / 10 val chars
    assert dm_(tmp_path, source="text", path=str(path), block_size=9).val_tokens == 10
    with pytest.raises(DataError) as e:
        dm_(tmp_path, source="text", path=str(path), block_size=10)
    assert str(e.value) == ("data.block_size=10 is larger than the corpus allows (90 train / 10 val tokens with "
                            "data.val_fraction=0.1); use data.block_size<=9 or more text")
    tiny = write(tmp_path / "tiny.txt", "abcdefghi")  # 8 train / 1 val chars: no window fits
    with pytest.raises(DataError) as e:
        dm_(tmp_path, source="text", path=str(tiny), block_size=1)
    assert str(e.value) == ("data.block_size=1 is larger than the corpus allows (8 train / 1 val tokens with "
                            "data.val_fraction=0.1); use more text")


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(source="web"), "data.source=web is unknown; use one of shakespeare, text, hf"),
        (dict(tokenizer="word"), "data.tokenizer=word is unknown; use one of char, byte, bpe"),
        (dict(val_fraction=0.0), "data.val_fraction=0.0 must be in (0, 1); e.g. data.val_fraction=0.1"),
        (dict(val_fraction=1.0), "data.val_fraction=1.0 must be in (0, 1); e.g. data.val_fraction=0.1"),
        (dict(batch_size=0), "data.batch_size=0 must be a positive integer"),
        (dict(block_size=-1), "data.block_size=-1 must be a positive integer"),
        (dict(tokenizer="bpe", vocab_size=256),
         "data.vocab_size=256 is too small for byte-level BPE (256 bytes + merges); use data.vocab_size>=257"),
        (dict(source="text"), "data.path is required for data.source=text; " + HINT),
        (dict(source="hf"),
         "data.name is required for data.source=hf; e.g. data.name=wikitext data.config=wikitext-2-raw-v1"),
    ],
)
def test_bad_settings_fail_at_construction(kw, message):
    with pytest.raises(DataError) as e:
        CorpusDataModule(**kw)
    assert str(e.value) == message


def test_use_before_prepare_is_an_error():
    with pytest.raises(RuntimeError, match="prepare"):
        CorpusDataModule().encode("a")


# --------------------------------------------------------------------------------------- Hugging Face


def test_hf_unreachable_fails_fast(tmp_path):
    if hf_data._hub_reachable():
        pytest.skip("the Hugging Face Hub is reachable from here")
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        dm_(tmp_path, source="hf", name="wikitext", config="wikitext-2-raw-v1")
    assert time.perf_counter() - t0 < 10
    assert str(e.value) == (
        "hf:wikitext/wikitext-2-raw-v1 could not be reached (no connection to the Hugging Face Hub and not in "
        "the local HF cache); use a local file instead: data=text data.path=FILE"
    )


@pytest.fixture
def hf_cached(tmp_path, monkeypatch):
    """A dataset 'tinycorpus' present only in a private HF datasets cache; the Hub treated as unreachable."""
    import datasets

    src_file = write(tmp_path / "rows.txt", "first row\nsecond row\n")
    datasets.load_dataset("text", data_files=str(src_file), split="train", cache_dir=str(tmp_path / "build"))
    built = next((tmp_path / "build" / "text").glob("default-*/0.0.0/*/"))
    entry = tmp_path / "hf" / "tinycorpus" / "default" / "0.0.0" / built.name
    entry.mkdir(parents=True)
    shutil.copy(built / "text-train.arrow", entry / "tinycorpus-train.arrow")
    info = json.loads((built / "dataset_info.json").read_text())
    info["dataset_name"] = info["splits"]["train"]["dataset_name"] = "tinycorpus"
    (entry / "dataset_info.json").write_text(json.dumps(info))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    monkeypatch.setattr(hf_data, "_hub_reachable", lambda: False)
    return "tinycorpus"


def test_hf_cached_dataset_works_offline(tmp_path, hf_cached):
    assert hf_data.load_hf(hf_cached, None, "train", "text") == "first row\nsecond row"
    dm = CorpusDataModule(source="hf", name=hf_cached, block_size=1, val_fraction=0.3, cache_dir=str(tmp_path / "c"))
    assert dm.name == "hf:tinycorpus"
    dm.prepare()
    assert dm.train_tokens + dm.val_tokens == len("first row\nsecond row")
    with pytest.raises(DataError) as e:
        hf_data.load_hf(hf_cached, None, "train", "content")
    assert str(e.value) == "data.text_field=content is not a column of hf:tinycorpus; columns: text"
    assert os.environ.get("HF_HUB_OFFLINE") is None  # offline mode was scoped to the call
    import datasets

    assert datasets.config.HF_HUB_OFFLINE is False

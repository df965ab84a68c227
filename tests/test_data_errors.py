"""Bad data fails early, in one line, and leaves the cache as it was (issue 31, item 4): a binary corpus from its
first bytes, out-of-vocabulary token files when opened, an unwritable results_dir before torch, and a job waiting
on another's prepare says so."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gqa_sweep.data.common import DataError
from gqa_sweep.data.prepare import cache_key, delimiter_on, make_source, prepare, tokenizer_settings
from gqa_sweep.data.progress import Progress
from gqa_sweep.data.sources import SNIFF_BYTES
from gqa_sweep.data.spec import REPEAT_WARN_EPOCHS, check_data
from gqa_sweep.store.locks import file_lock
from gqa_sweep.store.results import ResultsStore, StoreError
from tests.conftest import gqa_sweep

ROOT = Path(__file__).parents[1]
QUIET = Progress(enabled=False)
TEXT = "It is a truth universally acknowledged, that a single man in possession of a good fortune.\n"


def text_cfg(path: Path, cache: Path, **kw) -> dict:
    return {"source": "text", "path": str(path), "tokenizer": "char", "cache_dir": str(cache), "block_size": 8,
            "batch_size": 2, "val_batches": 1, **kw}


def binary(tmp_path: Path) -> Path:
    """An executable's first bytes: what data.path=/usr/bin/ls reads."""
    p = tmp_path / "prog"
    p.write_bytes(Path(sys.executable).resolve().read_bytes()[:100_000])
    return p


def test_a_binary_corpus_fails_from_its_first_bytes_before_anything_is_written(tmp_path):
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        check_data(text_cfg(binary(tmp_path), cache))
    assert time.perf_counter() - t0 < 2
    assert "is not text (a NUL byte at offset" in str(e.value) and "binary file" in str(e.value)
    with pytest.raises(DataError, match="is not text"):  # the prepare itself refuses it before any tokenizer
        prepare(text_cfg(binary(tmp_path), cache), QUIET)
    assert not cache.exists()
    # a directory names the file and how to leave it out
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(TEXT)
    (tmp_path / "docs" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(DataError, match=r"logo.png is not text .* data.suffixes=\[.txt,.md\]"):
        check_data(text_cfg(tmp_path / "docs", cache))
    check_data(text_cfg(tmp_path / "docs", cache, suffixes=[".txt"]))


def test_strict_utf8_is_checked_in_the_head_but_a_character_cut_at_its_end_is_not_an_error(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 10)
    with pytest.raises(DataError, match=r"latin1.txt is not UTF-8 \(invalid byte at offset 3\); pass "
                                        "data.encoding_errors=replace"):
        check_data(text_cfg(latin1, tmp_path / "cache"))
    check_data(text_cfg(latin1, tmp_path / "cache", encoding_errors="replace"))
    cut = tmp_path / "cut.txt"  # "é" (2 bytes) straddles the end of the sniffed head
    cut.write_bytes(b"a" * (SNIFF_BYTES - 1) + "é\n".encode())
    check_data(text_cfg(cut, tmp_path / "cache"))


def test_a_prepare_that_fails_late_leaves_the_cache_as_it_was(tmp_path):
    late = tmp_path / "late.txt"  # text for longer than the sniffed head, then a byte that is not UTF-8
    late.write_bytes(TEXT.encode() * (2 * SNIFF_BYTES // len(TEXT)) + b"\xff\n" + TEXT.encode())
    for cache_existed in (False, True):
        cache = tmp_path / f"cache{int(cache_existed)}"
        if cache_existed:
            (cache / "other").mkdir(parents=True)
        check_data(text_cfg(late, cache))  # the head is text: only the prepare finds the bad byte
        with pytest.raises(DataError, match=r"late.txt is not UTF-8 \(invalid byte at offset \d+\)"):
            prepare(text_cfg(late, cache), QUIET)
        assert sorted(p.name for p in cache.iterdir()) == ["other"] if cache_existed else not cache.exists()


def test_a_job_waiting_on_another_prepare_says_so_then_shares_it(tmp_path, caplog):
    d = text_cfg(tmp_path / "a.txt", tmp_path / "cache")
    Path(d["path"]).write_text(TEXT * 50)
    source = make_source(d)
    key = cache_key(d, source, tokenizer_settings(d, delimiter_on(d, source.structured)))
    lock = tmp_path / "cache" / f".{key}.lock"
    held, release = threading.Event(), threading.Event()

    def other_job() -> None:
        with file_lock(lock, remove=True):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=other_job)
    thread.start()
    held.wait(10)
    threading.Timer(0.5, release.set).start()
    with caplog.at_level(logging.INFO, logger="gqa_sweep.data"):
        out = prepare(d, QUIET)
    thread.join()
    waits = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    assert waits == [f"waiting for process {os.getpid()}, which is preparing this corpus into {out}; its shards "
                     "will be shared"]
    assert (out / "meta.json").exists() and not lock.exists()


def test_a_removed_lock_file_never_lets_two_holders_in(tmp_path):
    lock, inside, overlaps = tmp_path / ".x.lock", [], []

    def job() -> None:
        for _ in range(20):
            with file_lock(lock, remove=True):
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(1)
                time.sleep(0.001)
                inside.pop()

    threads = [threading.Thread(target=job) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps and not lock.exists()


def test_a_single_plain_file_is_one_document(tmp_path, caplog):
    d = text_cfg(tmp_path / "one.txt", tmp_path / "cache")
    Path(d["path"]).write_text(TEXT * 50)
    with caplog.at_level(logging.INFO, logger="gqa_sweep.data"):
        out = prepare(d, Progress(enabled=True))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["documents"] == 1 and meta["split"]["by"] == "position"
    assert sum(s["docs"] for split in meta["shards"].values() for s in split) == 1
    prepared = [r.getMessage() for r in caplog.records if r.getMessage().startswith("prepared ")]
    assert prepared and prepared[0].endswith(" val tokens, 1 document")


# ------------------------------------------------------------------------------------------ token files


def raw_tokens(root: Path, top: int, dtype=np.uint16) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    ids = np.arange(2000, dtype=np.int64) % 1000
    ids[777] = top
    ids.astype(dtype).tofile(root / "train.bin")
    ids[:200].astype(dtype).tofile(root / "val.bin")
    return root


def test_token_files_are_checked_against_the_vocabulary_when_opened(tmp_path):
    d = raw_tokens(tmp_path / "tok", 60_000)
    cfg = {"source": "tokens", "path": str(d), "block_size": 8, "batch_size": 2, "val_batches": 1}
    with pytest.raises(DataError) as e:
        check_data(cfg)
    assert str(e.value) == (f"token file {d / 'train.bin'} holds id 60,000, outside the vocabulary of 50,257 ids "
                            "(GPT-2's, the default for headerless files) read as uint16; set data.vocab_size to the "
                            "vocabulary of the tokenizer that wrote it (above 60,000), or data.dtype=uint32 if it "
                            "wrote 4-byte ids")
    check_data({**cfg, "vocab_size": 60_001})
    with pytest.raises(DataError, match=r"outside the vocabulary of 60,000 ids \(data.vocab_size\)"):
        check_data({**cfg, "vocab_size": 60_000})
    with pytest.raises(DataError, match=r"read as uint32; .* or data.dtype=uint16 if it wrote 2-byte ids"):
        check_data({**cfg, "dtype": "uint32", "vocab_size": 60_001})  # 2-byte ids read in pairs


def test_unwritable_results_dir_is_refused_by_trying_not_by_permission_bits(tmp_path):
    ResultsStore(tmp_path / "new" / "deeper").check_writable()
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []  # the probe leaves nothing
    if not Path("/proc/self").exists():
        pytest.skip("no /proc on this system: its mkdir refusal is what this case exercises")
    with pytest.raises(StoreError) as e:  # root's permission bits say yes; /proc says no
        ResultsStore("/proc/gqa").check_writable()
    assert str(e.value).startswith("results_dir='/proc/gqa' is not writable (/proc: ")


@pytest.mark.parametrize("case", ["tokens", "results_dir"])
def test_the_two_former_tracebacks_are_one_line_before_training(case, tmp_path):
    if case == "results_dir" and not Path("/proc/self").exists():
        pytest.skip("no /proc on this system")
    args = (["data=tokens", f"data.path={raw_tokens(tmp_path / 'tok', 60_000)}", f"results_dir={tmp_path / 'r'}"]
            if case == "tokens" else ["results_dir=/proc/gqa"])
    proc = gqa_sweep(*args, cwd=tmp_path, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert ("holds id 60,000, outside the vocabulary" if case == "tokens" else "is not writable") in lines[0]
    assert not (tmp_path / "r" / "runs").exists()


# --------------------------------------------------------------------------------------------- defaults


def test_the_default_sweep_repeats_its_data_below_the_warning(tmp_path):
    """The quick start reads tiny Shakespeare 1.22 times on purpose: no warning about its own defaults."""
    from gqa_sweep.data.cli import compose_data

    d = compose_data([f"results_dir={tmp_path}"])
    cut = int(1_115_394 * (1 - d["val_fraction"]))  # char ids: one per character of the position split
    epochs = d["max_steps"] * d["batch_size"] * d["block_size"] / cut
    assert epochs == pytest.approx(1.224, abs=1e-3) and 1 < epochs < REPEAT_WARN_EPOCHS


def test_gqa_prepare_help_names_the_data_keys_and_where_the_shards_go():
    proc = subprocess.run([sys.executable, "-m", "gqa_sweep.data.cli", "--help"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    for fragment in ("data.path=null", "data.tokenizer=bpe", "data.vocab_size=1024", "data.name=null",
                     "data.cache_dir=${results_dir}/cache", "Where the shards go: data.cache_dir/<key>/"):
        assert fragment in proc.stdout

"""The ladder's corpus as data= choices that work from a clone (issue 31, item 3): data=ladder_local (the shipped
text, BPE 512) prepares offline; data=wikitext (the Hub) fails offline in about a second, saying so; the ladder
corpus recipe cuts its text with the one splitter."""

from __future__ import annotations

import time

import pytest

from gqa_sweep.data import hf as hf_data
from gqa_sweep.data.cli import compose_data
from gqa_sweep.data.common import DataError
from gqa_sweep.data.prepare import prepare
from gqa_sweep.data.progress import Progress
from gqa_sweep.data.sources import split_text
from gqa_sweep.data.spec import check_data
from gqa_sweep.data.tokens import open_prepared


def test_ladder_local_prepares_the_shipped_text_in_the_ladders_tokenizer(tmp_path):
    d = compose_data(["experiment=ladder", "data=ladder_local", f"results_dir={tmp_path}"])
    assert (d["source"], d["tokenizer"], d["vocab_size"], d["batch_size"]) == ("shakespeare", "bpe", 512, 16)
    check_data(d)
    corpus = open_prepared(prepare(d, Progress(enabled=False)))
    # the numbers docs/benchmarks.md ("Ladder corpora") states, and the passes it derives from them
    assert (len(corpus.train), len(corpus.val), corpus.vocab_size) == (516_405, 59_401, 512)


def test_wikitext_offline_fails_in_about_a_second_naming_the_fix(tmp_path, monkeypatch):
    d = compose_data(["experiment=ladder", "data=wikitext", f"results_dir={tmp_path}"])
    assert (d["source"], d["name"], d["config"], d["tokenizer"], d["vocab_size"]) == (
        "hf", "Salesforce/wikitext", "wikitext-2-raw-v1", "bpe", 512)
    if hf_data._hub_reachable():
        pytest.skip("the Hugging Face Hub is reachable from here")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # not in any cache
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        check_data(d)
    assert time.perf_counter() - t0 < 3  # the probe's 1 s timeout, with room for a busy machine
    assert str(e.value).startswith("hf:Salesforce/wikitext could not be reached (no connection to the Hugging Face "
                                   "Hub and not in the local HF cache); ")
    assert not (tmp_path / "cache").exists()


def test_ladder_corpus_pieces_come_from_the_one_text_splitter(tmp_path):
    from gqa_sweep.scaling.corpus import PIECE, build

    build_dir = tmp_path / "b"
    (build_dir / "kernel-docs").mkdir(parents=True)
    (build_dir / "kernel-docs" / "a.txt").write_text("kernel doc A\n")
    (build_dir / "kernel-docs" / "translations_it.txt").write_text("documentazione\n")
    gcide = "".join(f"entry {i}: a word and its meaning\n" for i in range(1000))
    (build_dir / "gcide.txt").write_text(gcide)
    n = build(build_dir, tmp_path / "out.txt")
    text = (tmp_path / "out.txt").read_text()
    parts = split_text(gcide, PIECE)
    assert len(parts) > 1 and all(p in text for p in parts) and "kernel doc A" in text
    assert "documentazione" not in text and n == len(text) == len(gcide) + len("kernel doc A\n") + len(parts)

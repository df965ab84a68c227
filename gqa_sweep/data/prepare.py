"""Streaming prepare: documents -> tokenizer -> token shards on disk, in bounded memory, resumable.

    source.pieces()  --reader thread-->  batches of about BATCH_BYTES of text
        --tokenizer.encode_batch (the library's threads)-->  ids per piece (+ the delimiter per document)
        --split by document (or by position)-->  train / val ShardWriters  -->  train-00000.bin, val-00000.bin, ...

Memory is one batch of text and its ids (a shard streams to its file), so it does not grow with the corpus.
The output directory is `cache_dir/<key>`, the key a hash of the source's identity (paths, sizes and mtimes, or
an HF fingerprint), the tokenizer's identity, the split, the delimiter policy, the shard size and the format.
`meta.json` is written last: a directory without it is incomplete and is never read. An interrupted prepare
(even kill -9) resumes from `state.json` (the reading cursor and the shards written), and ends with the same
bytes as an uninterrupted one, while one that fails on bad data (DataError) removes its directory and lock.
Parallel jobs serialise on a lock file (flock), a waiting one says for whom, and share the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from gqa_sweep.data.common import CACHE_FORMAT, DataError, atomic_write, token_dtype
from gqa_sweep.data.progress import Progress, counted
from gqa_sweep.data.shards import ShardWriter, inspect
from gqa_sweep.data.tokenizers import (
    BpeTokenizer,
    ByteTokenizer,
    CharTokenizer,
    is_builtin,
    load_named,
    load_saved,
)
from gqa_sweep.store.locks import file_lock

log = logging.getLogger("gqa_sweep.data")
DEFAULT_SHARD_TOKENS = 100_000_000
DEFAULT_BPE_SAMPLE_BYTES = 64 << 20
STATE_EVERY_S = 2.0


def batch_bytes() -> int:
    """Text per encode call: enough pieces for every thread, small enough that its ids stay cheap."""
    if os.environ.get("GQA_PREPARE_BATCH_BYTES"):  # tuning (and tests: many batches from a small corpus)
        return int(os.environ["GQA_PREPARE_BATCH_BYTES"])
    return min(64, max(4, 2 * (os.cpu_count() or 1))) << 20


def is_val(doc: int, val_fraction: float) -> bool:
    """A document's split from a hash of its index: stable when documents are appended, never cuts one."""
    h = int.from_bytes(hashlib.blake2b(doc.to_bytes(8, "little"), digest_size=8).digest(), "little")
    return h < val_fraction * 2**64


# ------------------------------------------------------------------------------------------------- sources


def make_source(d: dict):
    """The document source of a data config (`data.source` = shakespeare | text | hf)."""
    from gqa_sweep.data.sources import ShakespeareSource, TextSource

    vf = float(d.get("val_fraction", 0.1))
    if d["source"] == "text":
        return TextSource(d["path"], d.get("suffixes"), d.get("text_field", "text"),
                          d.get("encoding_errors", "strict"), vf)
    if d["source"] == "hf":
        from gqa_sweep.data.hf import HFSource

        return HFSource(d["name"], d.get("config"), d.get("split", "train"), d.get("text_field", "text"),
                        bool(d.get("streaming", False)), d.get("num_proc"))
    return ShakespeareSource(vf)


def delimiter_on(d: dict, structured: bool) -> bool:
    """`data.delimiter`: auto separates documents when the corpus has them; eot / none force it on / off."""
    policy = d.get("delimiter", "auto")
    if policy not in ("auto", "eot", "none"):
        raise DataError(f"data.delimiter={policy} is unknown; use auto, eot or none")
    return policy == "eot" or (policy == "auto" and structured)


def tokenizer_settings(d: dict, delimit: bool) -> dict:
    kind = d.get("tokenizer", "char")
    if kind == "bpe":
        return {"label": "bpe", "vocab_size": int(d.get("vocab_size", 1024)), "eot": delimit,
                "sample_bytes": int(d.get("bpe_sample_bytes") or DEFAULT_BPE_SAMPLE_BYTES)}
    if kind in ("char", "byte"):
        return {"label": kind, "eot": delimit}
    return {**load_named(kind).identity(), "delimit": delimit}


def cache_key(d: dict, source, tok_settings: dict) -> str:
    settings = {
        "format": CACHE_FORMAT,
        "source": source.identity(),
        "tokenizer": tok_settings,
        "val_fraction": float(d.get("val_fraction", 0.1)),
        "split": "document" if source.structured else "position",
        "shard_tokens": int(d.get("shard_tokens") or DEFAULT_SHARD_TOKENS),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]


# ----------------------------------------------------------------------------------------------- tokenizer


def build_tokenizer(d: dict, settings: dict, source, progress: Progress):
    """char: one pass for the character set; bpe: trained on the first bpe_sample_bytes of the train documents."""
    kind, eot = d.get("tokenizer", "char"), settings.get("eot", False)
    if kind == "byte":
        return ByteTokenizer(eot)
    vf = float(d.get("val_fraction", 0.1))
    if kind == "char":
        progress.start("reading (char vocabulary)", source.total_bytes)
        chars: set[str] = set()
        for p in source.pieces():
            chars.update(p.text)
            progress.update(p.nbytes)
        progress.end()
        return CharTokenizer("".join(sorted(chars)), eot)
    budget = settings["sample_bytes"]
    progress.start("training BPE", min(budget, source.total_bytes or budget))

    def sample():
        seen = 0
        for p in source.pieces():
            if (p.split or ("val" if is_val(p.doc, vf) else "train")) != "train":
                continue
            text = p.text[: budget - seen]  # the sample ends at the budget, not at a piece's end
            yield text
            seen += len(text)
            progress.update(len(text))
            if seen >= budget:
                return

    tok = BpeTokenizer.train(sample(), settings["vocab_size"], eot)
    progress.end()
    return tok


# --------------------------------------------------------------------------------------------------- main


def batches(pieces, size: int):
    """Lists of pieces of about `size` bytes of text, each ending at a piece one can resume after."""
    batch, n = [], 0
    for p in pieces:
        batch.append(p)
        n += len(p.text)
        if n >= size and p.cursor is not None:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


def prefetch(it, depth: int = 2):
    """Run `it` on a thread, `depth` items ahead: reading overlaps encoding (both release the GIL)."""
    q: queue.Queue = queue.Queue(depth)
    end = object()

    def run() -> None:
        try:
            for x in it:
                q.put(x)
            q.put(end)
        except BaseException as e:
            q.put(e)

    threading.Thread(target=run, daemon=True).start()
    while (x := q.get()) is not end:
        if isinstance(x, BaseException):
            raise x
        yield x


def split_counts(out: Path) -> dict[str, int]:
    """Tokens per split ({"train": ..., "val": ...}) of a finished prepare, from its meta.json."""
    meta = json.loads((Path(out) / "meta.json").read_text())
    return {s: sum(x["tokens"] for x in meta["shards"][s]) for s in ("train", "val")}


def prepared_counts(d: dict) -> dict[str, int] | None:
    """Tokens per split of data config `d` if they are known without reading text: its shards are in the
    cache, or it is token files (read in place); None otherwise (a hub dataset is never looked up here)."""
    if d.get("source") == "tokens":  # sizes from headers and file lengths: no id is read
        from gqa_sweep.data.tokens import token_files

        p = Path(os.path.expanduser(str(d["path"])))
        if p.is_dir() and (p / "meta.json").is_file():
            return split_counts(p)
        infos = [inspect(f, d.get("dtype")) for f in token_files(str(d["path"]))]
        return {s: sum(i.n_tokens for i in infos if ("val" in i.path.name) == (s == "val")) for s in ("train", "val")}
    if d.get("source") not in ("text", "shakespeare"):
        return None
    _, _, out = cache_location(d)
    return split_counts(out) if (out / "meta.json").exists() else None


def cache_location(d: dict) -> tuple[object, dict, Path]:
    """(the document source, the tokenizer settings, the cache directory its shards go to) of data config `d`."""
    source = make_source(d)
    settings = tokenizer_settings(d, delimiter_on(d, source.structured))
    cache_dir = Path(os.path.expanduser(d.get("cache_dir", "~/.cache/gqa-sweep")))
    return source, settings, cache_dir / cache_key(d, source, settings)


def prepare(d: dict, progress: Progress | None = None, on_hit=None) -> Path:
    """Shards for data config `d` (cached): the directory holding meta.json, tokenizer.json and the shards.

    A cache hit reads no text: the key comes from file sizes and mtimes (or the HF fingerprint). `on_hit(bool)`
    is told whether the shards were already there.
    """
    progress = progress or Progress()
    source, settings, out = cache_location(d)
    cache_dir = out.parent
    hit = (out / "meta.json").exists()
    if on_hit:
        on_hit(hit)
    if hit:
        return out
    lock = cache_dir / f".{out.name}.lock"
    made_cache_dir = not cache_dir.exists()

    def waiting(holder: int | None) -> None:
        log.info("waiting for %s, which is preparing this corpus into %s; its shards will be shared",
                 f"process {holder}" if holder else "another process", out)

    try:
        with file_lock(lock, on_wait=waiting, remove=True):
            if (out / "meta.json").exists():  # another job prepared it while we waited
                return out
            out.mkdir(parents=True, exist_ok=True)
            try:
                _prepare_into(out, d, source, settings, progress)
            except DataError:  # the corpus or the settings are bad: nothing in `out` is worth resuming from
                shutil.rmtree(out, ignore_errors=True)
                raise
    finally:
        if made_cache_dir and not (out / "meta.json").exists():
            with contextlib.suppress(OSError):  # only when empty: another job may be using it
                cache_dir.rmdir()
    return out


def _prepare_into(out: Path, d: dict, source, settings: dict, progress: Progress) -> None:
    t0 = time.perf_counter()
    kind = d.get("tokenizer", "char")
    if is_builtin(kind):
        if not (out / "tokenizer.json").exists():
            tok = build_tokenizer(d, settings, source, progress)
            atomic_write(out / "tokenizer.json", lambda f: f.write(_saved(tok)))
        tok = load_saved(out / "tokenizer.json", kind)
    else:
        tok = load_named(kind)
        if not settings["delimit"]:
            tok.delimiter = tok.delimiter_kind = None
        elif tok.delimiter is None:
            raise DataError(f"data.tokenizer={kind} has no end-of-text or begin-of-text special token to separate "
                            "documents; use data.delimiter=none or a tokenizer with one")
    dtype = token_dtype(tok.vocab_size)
    vf, shard_tokens = float(d.get("val_fraction", 0.1)), int(d.get("shard_tokens") or DEFAULT_SHARD_TOKENS)
    state_path = out / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    try:
        writers = {s: ShardWriter(out, s, shard_tokens, dtype, tok.vocab_size, tok.delimiter, progress,
                                  state["writers"][s] if state else None) for s in ("train", "val")}
    except (DataError, OSError, KeyError):  # an unusable state: start over (same bytes in the end)
        state = None
        for p in [*out.glob("*.bin"), *out.glob(".*.partial")]:
            p.unlink()
        writers = {s: ShardWriter(out, s, shard_tokens, dtype, tok.vocab_size, tok.delimiter, progress)
                   for s in ("train", "val")}
    cursor = tuple(state["cursor"]) if state else None
    docs, bytes_read = (state["docs"], state["bytes"]) if state else (0, 0)
    source.replaced.count = state["replaced"] if state else 0
    t_encode = time.perf_counter()
    progress.start(f"encoding with {tok.label}" + (" (resumed)" if state else ""), source.total_bytes, bytes_read)
    last_save = time.perf_counter()
    bos = tok.delimiter_kind == "bos"
    for batch in prefetch(batches(source.pieces(cursor), batch_bytes())):
        ids = tok.encode_batch([p.text for p in batch])
        finished = False
        for p, piece_ids in zip(batch, ids):
            split = p.split or ("val" if is_val(p.doc, vf) else "train")
            arr = np.asarray(piece_ids, dtype=dtype)  # ids < vocab_size fit the dtype: one conversion
            if tok.delimiter is not None and (p.first if bos else p.last):
                delim = np.array([tok.delimiter], dtype)
                arr = np.concatenate([delim, arr] if bos else [arr, delim])
            # a corpus without documents is one, though its val part starts a piece of its own
            new_doc = int(p.first and (source.structured or p.doc == 0))
            finished |= writers[split].write(arr, new_doc)
            docs += new_doc
            bytes_read += p.nbytes
        progress.update(sum(p.nbytes for p in batch), counted(docs, "document"))
        if finished or time.perf_counter() - last_save >= STATE_EVERY_S:
            _save_state(state_path, batch[-1].cursor, writers, docs, bytes_read, source.replaced.count)
            last_save = time.perf_counter()
    progress.end()
    for w in writers.values():
        w.finish()
        w.close()
    _check_splits(writers, vf, source, docs)
    meta = {
        "format": CACHE_FORMAT,
        "source": source.identity(),
        "path": getattr(source, "path", None),
        "tokenizer": {**tok.identity(), "vocab_size": tok.vocab_size, "spec": kind},
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "delimiter": {"id": tok.delimiter, "kind": tok.delimiter_kind,
                      "token": getattr(tok, "delimiter_token", "<|endoftext|>" if tok.delimiter is not None else None),
                      "policy": d.get("delimiter", "auto")},
        "split": {"by": "document" if source.structured else "position", "val_fraction": vf},
        "documents": docs,
        "bytes": bytes_read,
        "replaced_bytes": source.replaced.count,
        "shards": {s: w.done for s, w in writers.items()},
        "seconds": round(time.perf_counter() - t0, 2),  # this run (a resumed prepare: since the resume)
        "encode_seconds": round(time.perf_counter() - t_encode, 2),  # reading + encoding + writing
    }
    atomic_write(out / "meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))
    state_path.unlink(missing_ok=True)
    n_train = sum(s["tokens"] for s in meta["shards"]["train"])
    n_val = sum(s["tokens"] for s in meta["shards"]["val"])
    replaced = f", {source.replaced.count:,} undecodable bytes replaced" if source.replaced.count else ""
    progress.note(f"prepared {out}: {n_train:,} train / {n_val:,} val tokens, {counted(docs, 'document')}{replaced}")


def _saved(tok) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as t:
        tok.save(Path(t) / "tokenizer.json")
        return (Path(t) / "tokenizer.json").read_bytes()


def _save_state(path: Path, cursor, writers: dict, docs: int, nbytes: int, replaced: int) -> None:
    state = {"cursor": cursor, "writers": {s: w.state() for s, w in writers.items()}, "docs": docs,
             "bytes": nbytes, "replaced": replaced}
    atomic_write(path, lambda f: f.write(json.dumps(state).encode()))


def _check_splits(writers: dict, vf: float, source, docs: int) -> None:
    counts = {s: sum(x["tokens"] for x in w.done) for s, w in writers.items()}
    if docs == 0 or counts["train"] + counts["val"] == 0:
        raise DataError(f"the corpus is empty (no text in {getattr(source, 'path', None) or 'the source'}); "
                        "pass some text")
    for s in ("train", "val"):
        if counts[s] == 0:
            raise DataError(f"data.val_fraction={vf} puts none of the {docs} documents in {s}; "
                            f"{'raise' if s == 'val' else 'lower'} data.val_fraction or add documents")

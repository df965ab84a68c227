"""Torch-free checks of a data config: everything that can be seen before torch loads, in about a second.

`check_data(cfg.data)` raises DataError (a ValueError) with one line naming the fix for a bad source, a missing
path, an empty directory, a tokenizer that is not there (file, HF cache, tiktoken cache), a text_field that is
not a column, a vocabulary too large for the chosen dtype, a foreign or truncated token file, bad MQAR segments
and bad numbers. It imports neither torch nor lightning (tests assert it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gqa_sweep.data.common import PATH_HINT, DataError

SOURCES = ("shakespeare", "text", "hf", "tokens", "mqar")
# Which training batches a corpus config gives, part of every corpus run's identity (gqa_sweep.plan): 2 = windows
# drawn by Philox(seed, step) over memory-mapped token shards. Rows stored before it carry none (the offsets of
# version 1), so they are kept and reported, never reused as this computation. MQAR is unversioned:
# its batches did not change.
CORPUS_ORDER = 2
# Passes over the train split past which a run warns that its data repeated. Up to ~4 epochs, repeated tokens
# train about as well as new ones (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models", arXiv
# 2305.16264), so a repeat below it is a deliberate choice, not a confound: the default sweep reads tiny
# Shakespeare 1.2 times by design. The row's `epochs` records every run's passes either way.
REPEAT_WARN_EPOCHS = 4.0


def data_label(d: dict) -> str:
    """The dataset's name in rows and reports: the path as the user gave it, the HF name, or the source."""
    src = d.get("source", "shakespeare")
    if src == "text":
        from gqa_sweep.data.sources import dataset_label

        return dataset_label(str(d["path"]))
    if src == "tokens":
        return "tokens:" + str(d["path"]).rstrip("/")
    if src == "hf":
        return f"hf:{d['name']}" + (f"/{d['config']}" if d.get("config") else "")
    return src


def tokenizer_label(d: dict) -> str:
    tok = d.get("tokenizer") or ("tokens" if d.get("source") == "tokens" else "char")
    return f"bpe-{d.get('vocab_size') or 1024}" if tok == "bpe" else str(tok)


def _positive(d: dict, key: str, optional: bool = False) -> None:
    v = d.get(key)
    if optional and v is None:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise DataError(f"data.{key}={v} must be a positive integer")


def check_data(d: dict, deep: bool = True) -> None:
    """Raise DataError for any problem visible without torch; `deep` also probes the HF Hub / cache (<= ~1 s)."""
    src = d.get("source", "shakespeare")
    if src not in SOURCES:
        raise DataError(f"data.source={src} is unknown; use one of {', '.join(SOURCES)} (data=text, data=hf, ...)")
    if src == "mqar":
        from gqa_sweep.data.mqar import check_mqar

        check_mqar(d)
        return
    for key in ("block_size", "batch_size", "val_batches"):
        _positive(d, key)
    _positive(d, "max_steps", optional=True)
    for key in ("shard_tokens", "bpe_sample_bytes", "num_proc"):
        _positive(d, key, optional=True)
    if int(d.get("num_workers") or 0) < 0:
        raise DataError(f"data.num_workers={d.get('num_workers')} must be >= 0")
    vf = d.get("val_fraction", 0.1)
    if src != "tokens" and not (isinstance(vf, (int, float)) and 0.0 < vf < 1.0):
        raise DataError(f"data.val_fraction={vf} must be in (0, 1); e.g. data.val_fraction=0.1")
    if d.get("encoding_errors", "strict") not in ("strict", "replace"):
        raise DataError(f"data.encoding_errors={d.get('encoding_errors')} is unknown; use strict or replace")
    if d.get("delimiter", "auto") not in ("auto", "eot", "none"):
        raise DataError(f"data.delimiter={d.get('delimiter')} is unknown; use auto, eot or none")
    if d.get("dtype") not in (None, "uint16", "uint32"):
        raise DataError(f"data.dtype={d.get('dtype')} is unknown; use uint16 or uint32")
    _check_tokenizer(d)
    if src == "text":
        _check_text(d)
    elif src == "hf":
        _check_hf(d, deep)
    elif src == "tokens":
        _check_tokens(d)


def _check_tokenizer(d: dict) -> None:
    tok = d.get("tokenizer")
    if tok is None and d.get("source") == "tokens":
        return
    tok = tok or "char"
    vocab = d.get("vocab_size")
    if tok == "bpe":
        if not isinstance(vocab, int) or vocab < 257:
            raise DataError(f"data.vocab_size={vocab} is too small for byte-level BPE (256 bytes + merges); "
                            "use data.vocab_size>=257")
        if d.get("dtype") == "uint16" and vocab > 1 << 16:
            raise DataError(f"data.vocab_size={vocab} does not fit data.dtype=uint16 (<= 65,536 ids); "
                            "use data.dtype=uint32 or a smaller vocabulary")
        return
    if tok in ("char", "byte"):
        return
    from gqa_sweep.data.tokenizers import load_tiktoken, tokenizer_file

    if tok.startswith("tiktoken:"):
        load_tiktoken(tok)  # from the cache or a local file; never the network
    else:
        tokenizer_file(tok)


def _check_text(d: dict) -> None:
    from gqa_sweep.data.sources import TextSource

    if not d.get("path"):
        raise DataError(f"data.path is required for data=text; {PATH_HINT}")
    # the files, and the first bytes of each (a binary is refused here, before any tokenizer training)
    found = TextSource(str(d["path"]), d.get("suffixes"), encoding_errors=d.get("encoding_errors", "strict")).files
    if sum(f.stat().st_size for f in found) == 0:
        raise DataError(f"data.path={d['path']}: the file(s) are empty; {PATH_HINT} with some text in it")
    field = d.get("text_field", "text")
    for f in found:
        if f.suffix == ".jsonl":
            _check_jsonl_field(f, field)
        elif f.suffix == ".parquet":
            _check_parquet_field(f, field)


def _check_jsonl_field(f: Path, field: str) -> None:
    with open(f, "rb") as fh:
        for line in fh:
            if line.strip():
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise DataError(f"{f}: the first row is not JSON; fix the file or leave it out of "
                                    "data.path") from None
                if not isinstance(row, dict) or field not in row:
                    keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                    raise DataError(f"data.text_field={field} is not a field of {f} (first row's keys: {keys}); "
                                    "set data.text_field")
                return


def _check_parquet_field(f: Path, field: str) -> None:
    import pyarrow.parquet as pq

    names = pq.read_schema(f).names
    if field not in names:
        raise DataError(f"data.text_field={field} is not a column of {f} (columns: {', '.join(names)}); "
                        "set data.text_field")


def _check_hf(d: dict, deep: bool) -> None:
    if not d.get("name"):
        raise DataError("data.name is required for data=hf; e.g. data.name=Salesforce/wikitext "
                        "data.config=wikitext-2-raw-v1")
    if deep and not Path(os.path.expanduser(str(d["name"]))).exists():
        from gqa_sweep.data.common import LOCAL_HINT
        from gqa_sweep.data.hf import _hub_reachable, hf_cached

        if not hf_cached(d["name"]) and not _hub_reachable():
            raise DataError(f"hf:{d['name']} could not be reached (no connection to the Hugging Face Hub and not "
                            f"in the local HF cache); download it where there is a network (HF_HOME) or {LOCAL_HINT}")


def _check_tokens(d: dict) -> None:
    from gqa_sweep.data.shards import inspect
    from gqa_sweep.data.tokens import open_tokens, token_files

    if not d.get("path"):
        raise DataError("data.path is required for data=tokens; pass a directory with train.bin / val.bin or shards")
    p = Path(os.path.expanduser(str(d["path"])))
    if p.is_dir() and (p / "meta.json").is_file():
        return
    for f in token_files(str(d["path"])):
        inspect(f, d.get("dtype"))
    open_tokens(d)  # headers only: splits and vocabulary

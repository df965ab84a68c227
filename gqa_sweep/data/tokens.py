"""Opening token data for training: a prepared shard directory, or existing token files read where they are.

`data=tokens data.path=...` takes, without conversion or copying:
- a gqa-prepare output directory (it holds meta.json),
- nanoGPT's `train.bin` / `val.bin` (headerless uint16; vocab from `meta.pkl` when there, else data.vocab_size,
  else GPT-2's 50,257),
- llm.c / modded-nanogpt shards (`fineweb_train_000001.bin`, ...: 256 x int32 header, magic 20240520),
- any directory, glob or list of our shards.
Files whose name contains "val" are the validation split, the others train.
"""

from __future__ import annotations

import functools
import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gqa_sweep.data.common import DataError
from gqa_sweep.data.shards import ShardInfo, TokenStream, inspect

GPT2_VOCAB = 50257


@dataclass
class Corpus:
    """What training reads: two token streams, the vocabulary size and (when known) the tokenizer."""

    train: TokenStream
    val: TokenStream
    vocab_size: int
    tokenizer: object | None
    meta: dict


def open_prepared(out: Path, tokenizer_spec: str | None = None) -> Corpus:
    """The shards of a finished prepare (meta.json present); headers and sizes are checked, no ids are read."""
    from gqa_sweep.data.tokenizers import is_builtin, load_named, load_saved

    meta = json.loads((out / "meta.json").read_text())
    spec = tokenizer_spec or meta["tokenizer"]["spec"]
    streams = {}
    for split in ("train", "val"):
        infos = [inspect(out / s["file"]) for s in meta["shards"][split]]
        for info, s in zip(infos, meta["shards"][split]):
            if info.n_tokens != s["tokens"]:
                raise DataError(f"{info.path} holds {info.n_tokens} tokens, meta.json says {s['tokens']}; "
                                "delete the directory and prepare again")
        streams[split] = TokenStream(infos)
    tok = load_saved(out / "tokenizer.json", spec) if is_builtin(spec) else load_named(spec)
    if meta["delimiter"]["id"] is None:
        tok.delimiter = tok.delimiter_kind = None
    return Corpus(streams["train"], streams["val"], int(meta["vocab_size"]), tok, meta)


def token_files(path: str) -> list[Path]:
    expanded = os.path.expanduser(path)
    if glob.has_magic(expanded):
        found = sorted(Path(p) for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
    elif Path(expanded).is_dir():
        found = sorted(p for p in Path(expanded).iterdir() if p.is_file() and p.suffix == ".bin")
    elif Path(expanded).is_file():
        found = [Path(expanded)]
    else:
        raise DataError(f"data.path={path} does not exist; pass a directory of token files (train.bin / val.bin, "
                        "llm.c or gqa-prepare shards) or a glob")
    if not found:
        raise DataError(f"data.path={path} holds no *.bin token files; pass a directory with train.bin / val.bin "
                        "or shards, or a glob")
    return found


def nanogpt_vocab(directory: Path) -> int | None:
    """vocab_size from nanoGPT's meta.pkl (its char-level datasets write one), read as plain data only."""
    import pickle

    p = directory / "meta.pkl"
    if not p.is_file():
        return None

    class Plain(pickle.Unpickler):
        def find_class(self, module, name):  # a dict of str/int only: refuse anything executable
            raise pickle.UnpicklingError(f"{module}.{name}")

    try:
        with open(p, "rb") as f:
            return int(Plain(f).load()["vocab_size"])
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError):
        return None


def open_tokens(d: dict) -> Corpus:
    """`data=tokens`: existing token files, memory-mapped where they are."""
    path = d.get("path")
    if not path:
        raise DataError("data.path is required for data=tokens; pass a directory with train.bin / val.bin or shards")
    p = Path(os.path.expanduser(path))
    if p.is_dir() and (p / "meta.json").is_file():
        return open_prepared(p, d.get("tokenizer"))
    files = token_files(path)
    infos = [inspect(f, d.get("dtype")) for f in files]
    val = [i for i in infos if "val" in i.path.name]
    train = [i for i in infos if "val" not in i.path.name]
    if not val or not train:
        missing = "val" if not val else "train"
        raise DataError(f"data.path={path} has no {missing} token file (val files have 'val' in their name); "
                        f"add one, e.g. {missing}.bin")
    vocab = _vocab_of(infos, d, files[0].parent)
    tok = None
    spec = d.get("tokenizer")
    if spec and spec not in ("char", "byte", "bpe"):
        from gqa_sweep.data.tokenizers import load_named

        tok = load_named(spec)
    return Corpus(TokenStream(train), TokenStream(val), vocab, tok, {"files": [str(f) for f in files]})


def _vocab_of(infos: list[ShardInfo], d: dict, directory: Path) -> int:
    from_headers = {i.vocab_size for i in infos if i.vocab_size is not None}
    if len(from_headers) > 1:
        raise DataError(f"the token files disagree on the vocabulary ({sorted(from_headers)}); pass files of one "
                        "tokenizer")
    if from_headers:
        return from_headers.pop()
    given, pkl = d.get("vocab_size"), nanogpt_vocab(directory)
    vocab = given or pkl or GPT2_VOCAB
    limit = 1 << (8 * infos[0].dtype.itemsize)
    if vocab > limit:
        raise DataError(f"data.vocab_size={vocab} does not fit {infos[0].dtype.name} ids; set data.dtype=uint32")
    source = "data.vocab_size" if given else f"{directory / 'meta.pkl'}" if pkl else \
        "GPT-2's, the default for headerless files"
    for info in infos:  # headerless ids were never checked by a writer: an id >= vocab would fail in the embedding
        top = max_id(info.path, info.dtype.str)
        if top >= vocab:
            other = "uint32 if it wrote 4-byte ids" if info.dtype.itemsize == 2 else "uint16 if it wrote 2-byte ids"
            raise DataError(f"token file {info.path} holds id {top:,}, outside the vocabulary of {vocab:,} ids "
                            f"({source}) read as {info.dtype.name}; set data.vocab_size to the vocabulary of the "
                            f"tokenizer that wrote it (above {top:,}), or data.dtype={other}")
    return int(vocab)


def max_id(path: Path, dtype: str) -> int:
    """The largest id in a headerless token file (cached per process while its size and mtime stay the same)."""
    st = path.stat()
    return _max_id(path, dtype, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _max_id(path: Path, dtype: str, size: int, mtime_ns: int, chunk: int = 1 << 26) -> int:
    ids = np.memmap(path, dtype=np.dtype(dtype), mode="r") if size else np.zeros(0, dtype)
    return max((int(ids[i:i + chunk].max()) for i in range(0, len(ids), chunk)), default=-1)  # memory stays flat

"""Token shards on disk: our format, nanoGPT's raw .bin and llm.c's shards, all read in place by np.memmap.

Our shard (`train-00000.bin`): a 1 KiB header of 128 little-endian int64

    [0] MAGIC   [1] VERSION   [2] bytes per token (2: uint16, 4: uint32)   [3] n_tokens
    [4] vocab_size   [5] delimiter id (-1: none)   [6..127] zero

then n_tokens ids. A file whose size is not header + n_tokens * itemsize, or whose magic is foreign, is refused
(a truncated or half-copied shard is never read). Writes are atomic (temp file + rename), so a killed prepare
leaves whole shards or none; `ShardWriter` is the prepare's writer, which resumes from its saved state.

Foreign formats, read without conversion:
- llm.c / modded-nanogpt: a 256 x int32 header, magic 20240520 (GPT-2, version 1, uint16 ids) or 20240801
  (Llama-3, version 7, uint32 ids), header[2] = n_tokens.
- nanoGPT `train.bin` / `val.bin`: headerless uint16 (or `data.dtype`).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gqa_sweep.data.common import DataError, atomic_write
from gqa_sweep.data.progress import Progress, counted

MAGIC = 0x5344_5341_5147  # "GQASDS" little-endian
VERSION = 1
HEADER_BYTES = 1024
LLMC = {20240520: (1, np.uint16, 50257), 20240801: (7, np.uint32, 128256)}  # magic: version, dtype, vocab
LLMC_HEADER_BYTES = 256 * 4


def shard_header(n_tokens: int, dtype: np.dtype, vocab_size: int, delimiter: int | None) -> bytes:
    h = np.zeros(HEADER_BYTES // 8, "<i8")
    h[:6] = MAGIC, VERSION, np.dtype(dtype).itemsize, n_tokens, vocab_size, -1 if delimiter is None else delimiter
    return h.tobytes()


def write_shard(path: Path, tokens: np.ndarray, vocab_size: int, delimiter: int | None) -> None:
    """Header + ids, written atomically."""

    def write(f) -> None:
        f.write(shard_header(len(tokens), tokens.dtype, vocab_size, delimiter))
        f.write(np.ascontiguousarray(tokens).astype(tokens.dtype.newbyteorder("<"), copy=False).tobytes())

    atomic_write(path, write)


@dataclass(frozen=True)
class ShardInfo:
    """Where a file's ids are: byte offset, dtype and count; vocab and delimiter when the header has them."""

    path: Path
    offset: int
    dtype: np.dtype
    n_tokens: int
    vocab_size: int | None = None
    delimiter: int | None = None
    kind: str = "gqa"

    def open(self) -> np.memmap:
        if self.n_tokens == 0:
            return np.zeros(0, self.dtype)
        m = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=(self.n_tokens,))
        # Windows are read at random: no readahead (and, on Linux >= 6.4, no fault-around), so a window of 2 KB
        # reads and maps a page or two, not 128 KB around it.
        if hasattr(mmap, "MADV_RANDOM") and getattr(m, "_mmap", None) is not None:
            m._mmap.madvise(mmap.MADV_RANDOM)
        return m


def _truncated(path: Path, size: int, want: int) -> DataError:
    return DataError(f"token file {path} is truncated or foreign ({size} bytes, its header says {want}); "
                     "delete it and rerun gqa-prepare (or copy it again)")


def inspect(path: Path, raw_dtype: str | None = None) -> ShardInfo:
    """The layout of one token file, from its header and size (never from its contents)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) >= 16 and int(np.frombuffer(head[:8], "<i8")[0]) == MAGIC:
        if len(head) < HEADER_BYTES:
            raise _truncated(path, size, HEADER_BYTES)
        h = np.frombuffer(head, "<i8")
        if int(h[1]) != VERSION or int(h[2]) not in (2, 4):
            raise DataError(f"token file {path} has shard version {h[1]} / {h[2]}-byte ids that this gqa-sweep "
                            "cannot read; re-create it with this version's gqa-prepare")
        dtype = np.dtype("<u2" if h[2] == 2 else "<u4")
        want = HEADER_BYTES + int(h[3]) * dtype.itemsize
        if size != want:
            raise _truncated(path, size, want)
        return ShardInfo(path, HEADER_BYTES, dtype, int(h[3]), int(h[4]), None if h[5] < 0 else int(h[5]))
    if len(head) >= 12 and int(np.frombuffer(head[:4], "<i4")[0]) in LLMC:
        h = np.frombuffer(head[:12], "<i4")
        version, dt, vocab = LLMC[int(h[0])]
        if int(h[1]) != version:
            raise DataError(f"token file {path}: llm.c magic {h[0]} with version {h[1]} (expected {version}); "
                            "re-create it with llm.c's fineweb.py")
        dtype = np.dtype(dt).newbyteorder("<")
        want = LLMC_HEADER_BYTES + int(h[2]) * dtype.itemsize
        if size != want:
            raise _truncated(path, size, want)
        return ShardInfo(path, LLMC_HEADER_BYTES, dtype, int(h[2]), vocab, None, "llm.c")
    dtype = np.dtype(raw_dtype or "uint16").newbyteorder("<")
    if size % dtype.itemsize:
        raise DataError(f"token file {path} has {size} bytes, not a whole number of {dtype.name} ids; "
                        "set data.dtype=uint16|uint32 to the dtype it was written with")
    return ShardInfo(path, 0, dtype, size // dtype.itemsize, None, None, "raw")


class TokenStream:
    """Several token files read as one stream of ids; slices may cross file boundaries.

    Windows are read with pread from a descriptor per file, opened lazily once per process (a DataLoader
    worker opens its own; pickling sends paths only): the kernel's page cache holds the shards, but nothing is
    mapped into the process, so its RSS stays flat over a run (np.memmap reads grew it by the pages touched,
    1.87 GB over 1,000 steps of a 1B-token set: docs/benchmarks.md).
    """

    def __init__(self, shards: list[ShardInfo]) -> None:
        self.shards = [s for s in shards if s.n_tokens > 0]
        self.starts = np.cumsum([0] + [s.n_tokens for s in self.shards], dtype=np.int64)
        self.n_tokens = int(self.starts[-1])
        self._fds: list[int] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": None}

    def __len__(self) -> int:
        return self.n_tokens

    @property
    def fds(self) -> list[int]:
        if self._fds is None:
            self._fds = [os.open(s.path, os.O_RDONLY) for s in self.shards]
        return self._fds

    def _read(self, i: int, lo: int, n: int) -> np.ndarray:
        s = self.shards[i]
        size = np.dtype(s.dtype).itemsize
        buf = os.pread(self.fds[i], n * size, s.offset + lo * size)
        if len(buf) != n * size:
            raise DataError(f"token file {s.path} is truncated ({len(buf) // size} of {n} ids at {lo}); "
                            "delete its directory and prepare again")
        return np.frombuffer(buf, dtype=s.dtype).astype(np.int64)

    def window(self, start: int, length: int) -> np.ndarray:
        """ids [start, start + length) as int64 (one read, one copy, of the window only)."""
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        lo = start - int(self.starts[i])
        parts, need = [], length
        while need > 0 and i < len(self.shards):
            n = min(need, self.shards[i].n_tokens - lo)
            parts.append(self._read(i, lo, n))
            need -= n
            i, lo = i + 1, 0
        return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        return np.stack([self.window(int(s), length) for s in starts]) if len(starts) else np.zeros((0, length),
                                                                                                   np.int64)

    def __getitem__(self, key) -> np.ndarray:
        """Slices only (what tests and prompts read); ids as int64."""
        start, stop, step = key.indices(self.n_tokens)
        return self.window(start, max(0, stop - start))[::step]


# ------------------------------------------------------------------------------------------------- writer


class ShardWriter:
    """Appends ids to `{split}-{k:05d}.bin`, `shard_tokens` per file; the open shard is `.{name}.partial`."""

    def __init__(self, out: Path, split: str, shard_tokens: int, dtype: np.dtype, vocab: int, delim: int | None,
                 progress: Progress, state: dict | None = None) -> None:
        self.out, self.split, self.cap, self.dtype = out, split, shard_tokens, np.dtype(dtype).newbyteorder("<")
        self.vocab, self.delim, self.progress = vocab, delim, progress
        self.done: list[dict] = []  # {"file", "tokens", "docs"} of finished shards
        self.n, self.docs, self.f = 0, 0, None
        if state:
            self._restore(state)

    def name(self, k: int) -> str:
        return f"{self.split}-{k:05d}.bin"

    def partial(self, k: int) -> Path:
        return self.out / f".{self.name(k)}.partial"

    def _restore(self, state: dict) -> None:
        self.done = state["done"]
        for s in self.done:
            if inspect(self.out / s["file"]).n_tokens != s["tokens"]:
                raise DataError(f"{self.out / s['file']} does not match the prepare state")
        k, n = len(self.done), state["tokens"]
        final, part = self.out / self.name(k), self.partial(k)
        if final.exists():  # finished after the state was saved: reopen it as the partial shard
            os.replace(final, part)
        for p in list(self.out.glob(f"{self.split}-*.bin")) + list(self.out.glob(f".{self.split}-*.partial")):
            if p not in (part,) and p.name not in {s["file"] for s in self.done}:
                p.unlink()
        if n:
            if not part.exists() or part.stat().st_size < HEADER_BYTES + n * self.dtype.itemsize:
                raise DataError("partial shard shorter than the prepare state")
            self.f = open(part, "r+b")  # noqa: SIM115 (held open across writes)
            self.f.truncate(HEADER_BYTES + n * self.dtype.itemsize)
            self.f.seek(0, os.SEEK_END)
        self.n, self.docs = n, state["docs"]

    def state(self) -> dict:
        if self.f is not None:
            self.f.flush()
            os.fsync(self.f.fileno())
        return {"done": self.done, "tokens": self.n, "docs": self.docs}

    def write(self, ids: np.ndarray, new_docs: int) -> bool:
        """Append; True when a shard was finished."""
        self.docs += new_docs
        finished = False
        while len(ids):
            if self.f is None:
                self.f = open(self.partial(len(self.done)), "wb")  # noqa: SIM115
                self.f.write(bytes(HEADER_BYTES))
            take = ids[: self.cap - self.n]
            self.f.write(take.astype(self.dtype, copy=False).tobytes())
            self.n += len(take)
            ids = ids[len(take):]
            if self.n == self.cap:
                self.finish()
                finished = True
        return finished

    def finish(self) -> None:
        """Header with the final count, fsync, rename: the shard appears whole or not at all."""
        if self.f is None:
            return
        k = len(self.done)
        self.f.seek(0)
        self.f.write(shard_header(self.n, self.dtype, self.vocab, self.delim))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        self.f = None
        os.replace(self.partial(k), self.out / self.name(k))
        self.done.append({"file": self.name(k), "tokens": self.n, "docs": self.docs})
        docs = f", {counted(self.docs, 'document')}" if self.docs else ""  # a corpus without documents: none
        self.progress.note(f"wrote shard {self.name(k)} ({self.n:,} tokens{docs})")
        self.n, self.docs = 0, 0

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None

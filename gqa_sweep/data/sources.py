"""Where documents come from, read as a stream of pieces (never the whole corpus in memory).

A source yields `Piece`s of at most about PIECE_BYTES of text. One file (.txt/.md/any plain file) or one row
(.jsonl/.parquet, a Hugging Face dataset) is one document; a large document is cut into pieces at newlines.
Each piece carries a `cursor`, where reading resumes after it, so that an interrupted prepare continues at the
first missing shard without re-reading what it wrote.

A corpus with no document structure (tiny Shakespeare, a single text file) is split by position instead of by
document: the train part is its first (1 - val_fraction) bytes (the cut moved forward to a UTF-8 character
boundary), the val part the rest, as two documents with their split forced.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from gqa_sweep.data.common import PATH_HINT, DataError

PIECE_BYTES = 1 << 20
SNIFF_BYTES = 8192  # the head of each file read by `sniff_text`: enough to tell text from a binary at once
ROW_SUFFIXES = (".jsonl", ".parquet")  # one row = one document; every other file is one document of text


@dataclass
class Piece:
    text: str
    doc: int  # document index in source order (the val split hashes it)
    first: bool  # the document's first piece (a BOS delimiter goes before it)
    last: bool  # its last piece (an EOT delimiter goes after it)
    cursor: tuple | None  # where reading resumes after this piece; None: not a place to resume at
    nbytes: int  # source bytes this piece consumed (progress)
    split: str | None = None  # forced split of a corpus without document structure


class ReplaceCounter:
    """A codecs error handler that replaces bad bytes with U+FFFD and counts them."""

    def __init__(self) -> None:
        self.count = 0
        self.name = f"gqa_count_{id(self)}"
        codecs.register_error(self.name, self)

    def __call__(self, exc: UnicodeDecodeError):
        self.count += exc.end - exc.start
        return "\ufffd", exc.end


def position_cut(data: bytes | int, val_fraction: float, read_byte=None) -> int:
    """The byte where val starts: (1 - val_fraction) of the size, moved forward to a UTF-8 character start."""
    size = data if isinstance(data, int) else len(data)
    cut = int(size * (1 - val_fraction))
    byte_at = read_byte or (lambda i: data[i])
    while cut < size and (byte_at(cut) & 0xC0) == 0x80:
        cut += 1
    return cut


def split_bytes(data: bytes, start: int, stop: int, size: int = PIECE_BYTES) -> Iterator[tuple[int, int]]:
    """(lo, hi) pieces of data[start:stop] of about `size` bytes, each ending at a newline when there is one."""
    lo = start
    while lo < stop:
        hi = data.find(b"\n", min(lo + size, stop), stop)
        hi = stop if hi < 0 else hi + 1
        yield lo, hi
        lo = hi


def split_text(text: str, size: int = PIECE_BYTES) -> list[str]:
    """A long document in pieces of about `size` characters ending at newlines (a short one unchanged)."""
    if len(text) <= size:
        return [text]
    out, lo = [], 0
    while lo < len(text):
        hi = text.find("\n", lo + size)
        hi = len(text) if hi < 0 else hi + 1
        out.append(text[lo:hi])
        lo = hi
    return out


def row_pieces(text: str, doc: int, cursor: tuple, nbytes: int) -> Iterator[Piece]:
    parts = split_text(text)
    for j, p in enumerate(parts):
        last = j == len(parts) - 1
        yield Piece(p, doc, j == 0, last, cursor if last else None, nbytes if last else 0)


# ------------------------------------------------------------------------------------------------ text files


def resolve_files(path: str, suffixes: list[str] | None = None) -> list[Path]:
    """A file, a directory (recursively: every regular file, or those ending in `suffixes`), or a glob; sorted."""
    expanded = os.path.expanduser(path)
    keep = tuple(s if s.startswith(".") else "." + s for s in suffixes) if suffixes else None

    def wanted(p: Path) -> bool:
        return p.is_file() and not p.name.startswith(".") and (keep is None or p.name.endswith(keep))

    if glob.has_magic(expanded):
        found = sorted(p for p in map(Path, glob.glob(expanded, recursive=True)) if wanted(p))
        if not found:
            raise DataError(f"data.path={path} matches no files; {PATH_HINT}")
        return found
    p = Path(expanded)
    if p.is_dir():
        found = sorted(q for q in p.rglob("*") if wanted(q))
        if not found:
            which = f"files ending in {', '.join(keep)}" if keep else "regular files"
            raise DataError(f"data.path={path} is a directory with no {which}; {PATH_HINT}"
                            + (" or change data.suffixes" if keep else ""))
        return found
    if p.is_file():
        return [p]
    raise DataError(f"data.path={path} does not exist; {PATH_HINT}")


def not_utf8(path: str, where: Path, offset: int) -> DataError:
    return DataError(f"data.path={path}: {where} is not UTF-8 (invalid byte at offset {offset}); pass "
                     "data.encoding_errors=replace, convert it (iconv -t UTF-8) or leave it out of data.path")


def sniff_text(files: list[Path], path: str, errors: str = "strict") -> None:
    """Refuse a file that is not text from its first SNIFF_BYTES, before any tokenizer reads the corpus: a NUL
    byte (no text encoding data.path takes has one; executables, archives and images do), or, with strict
    errors, bytes that are not UTF-8. Parquet is binary by design and is checked by its schema instead."""
    for f in files:
        if f.suffix == ".parquet":
            continue
        with open(f, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
        nul = head.find(b"\0")
        if nul >= 0:
            raise DataError(f"data.path={path}: {f} is not text (a NUL byte at offset {nul}: a binary file); pass "
                            "UTF-8 text files, or leave it out (a directory: data.suffixes=[.txt,.md])")
        if errors == "strict":
            try:  # an incremental decode: a character cut at the end of the head is not an error
                codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
            except UnicodeDecodeError as e:
                raise not_utf8(path, f, e.start) from None


def dataset_label(path: str) -> str:
    """The dataset's name: the path as the user gave it (a glob stays a glob), home shortened."""
    return "text:" + path.rstrip("/")


class TextSource:
    """Local files: .txt/.md/other plain text (one file = one document), .jsonl and .parquet (one row each)."""

    def __init__(self, path: str, suffixes: list[str] | None = None, text_field: str = "text",
                 encoding_errors: str = "strict", val_fraction: float = 0.1) -> None:
        if encoding_errors not in ("strict", "replace"):
            raise DataError(f"data.encoding_errors={encoding_errors} is unknown; use strict or replace")
        self.path, self.text_field, self.errors = path, text_field, encoding_errors
        self.files = resolve_files(path, suffixes)
        sniff_text(self.files, path, encoding_errors)
        self.val_fraction = val_fraction
        self.structured = len(self.files) > 1 or self.files[0].suffix in ROW_SUFFIXES
        self.replaced = ReplaceCounter()
        self.total_bytes = sum(f.stat().st_size for f in self.files)

    def identity(self) -> dict:
        """Paths, sizes and mtimes (hashed as they are listed): a changed file is a new corpus, no text is read."""
        h = hashlib.sha256()
        for f in self.files:
            st = f.stat()
            h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {"kind": "text", "text_field": self.text_field, "errors": self.errors, "n_files": len(self.files),
                "bytes": self.total_bytes, "files_sha256": h.hexdigest()}

    def _decode(self, raw: bytes, where: Path, offset: int) -> str:
        if self.errors == "replace":
            return raw.decode("utf-8", errors=self.replaced.name)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise not_utf8(self.path, where, offset + e.start) from None

    def pieces(self, cursor: tuple | None = None) -> Iterator[Piece]:
        fi, pos, doc, _ = cursor or (0, 0, 0, False)
        for i in range(fi, len(self.files)):
            f = self.files[i]
            start = pos if i == fi else 0
            if f.suffix == ".jsonl":
                doc = yield from self._jsonl(i, f, start, doc)
            elif f.suffix == ".parquet":
                doc = yield from self._parquet(i, f, start, doc)
            elif not self.structured:
                yield from self._single(f, start)
            else:
                doc = yield from self._file(i, f, start, doc)

    def _file(self, i: int, f: Path, start: int, doc: int):
        data = f.read_bytes()  # one document: one file, read once (a large single file streams in _single)
        if not data.strip():
            return doc
        spans = list(split_bytes(data, start, len(data)))
        for j, (lo, hi) in enumerate(spans):
            last = j == len(spans) - 1
            cur = (i + 1, 0, doc + 1, False) if last else (i, hi, doc, True)
            yield Piece(self._decode(data[lo:hi], f, lo), doc, lo == 0, last, cur, hi - lo)
        return doc + 1

    def _single(self, f: Path, start: int):
        size = f.stat().st_size
        with open(f, "rb") as fh:
            def byte_at(k: int) -> int:
                fh.seek(k)
                return fh.read(1)[0]

            cut = position_cut(size, self.val_fraction, byte_at)
            fh.seek(start)
            pos = start
            while pos < size:
                stop = cut if pos < cut else size
                raw = fh.read(min(PIECE_BYTES, stop - pos))
                if pos + len(raw) < stop:
                    raw += fh.readline()  # end the piece at a newline
                    if pos + len(raw) > stop:  # never across the cut
                        fh.seek(stop)
                        raw = raw[: stop - pos]
                hi = pos + len(raw)
                doc = 0 if pos < cut else 1
                yield Piece(self._decode(raw, f, pos), doc, pos in (0, cut), hi in (cut, size),
                            (0, hi, 0, True), hi - pos, "train" if doc == 0 else "val")
                pos = hi

    def _jsonl(self, i: int, f: Path, start: int, doc: int):
        with open(f, "rb") as fh:
            fh.seek(start)
            pos = start
            for line in fh:
                at, pos = pos, pos + len(line)
                if not line.strip():
                    continue
                try:
                    row = json.loads(self._decode(line, f, at))
                except json.JSONDecodeError as e:
                    raise DataError(f"{f}: the line at byte {at} is not JSON ({e.msg}); fix the file or leave it "
                                    "out of data.path") from None
                if not isinstance(row, dict) or self.text_field not in row:
                    keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                    raise DataError(f"data.text_field={self.text_field} is not a field of {f} (first keys: {keys}); "
                                    "set data.text_field")
                text = row[self.text_field]
                if not text:
                    continue
                yield from row_pieces(str(text), doc, (i, pos, doc + 1, False), pos - at)
                doc += 1
        return doc

    def _parquet(self, i: int, f: Path, start: int, doc: int):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(f)
        if self.text_field not in pf.schema_arrow.names:
            raise DataError(f"data.text_field={self.text_field} is not a column of {f} (columns: "
                            f"{', '.join(pf.schema_arrow.names)}); set data.text_field")
        row, per_row = 0, f.stat().st_size / max(1, pf.metadata.num_rows)
        for batch in pf.iter_batches(batch_size=1024, columns=[self.text_field]):
            for text in batch.column(0).to_pylist():
                row += 1
                if row <= start or not text:
                    continue
                yield from row_pieces(text, doc, (i, row, doc + 1, False), int(per_row))
                doc += 1
        return doc


class ShakespeareSource:
    """The tiny-shakespeare corpus shipped with the package (1,115,394 characters): one document, no structure."""

    structured = False
    path = None

    def __init__(self, val_fraction: float = 0.1) -> None:
        self.val_fraction = val_fraction
        self.replaced = ReplaceCounter()
        self.total_bytes = len(self.data)

    @property
    def data(self) -> bytes:
        blob = files("gqa_sweep").joinpath("corpora", "tinyshakespeare.txt.gz").read_bytes()
        return gzip.decompress(blob)

    def identity(self) -> dict:
        return {"kind": "shakespeare", "bytes": self.total_bytes}

    def pieces(self, cursor: tuple | None = None) -> Iterator[Piece]:
        data = self.data
        cut = position_cut(data, self.val_fraction)
        start = cursor[1] if cursor else 0
        for lo, hi in [*split_bytes(data, 0, cut), *split_bytes(data, cut, len(data))]:
            if lo < start:
                continue
            doc = 0 if lo < cut else 1
            yield Piece(data[lo:hi].decode("utf-8"), doc, lo in (0, cut), hi in (cut, len(data)),
                        (0, hi, 0, True), hi - lo, "train" if doc == 0 else "val")


def load_shakespeare() -> str:
    return ShakespeareSource().data.decode("utf-8")

"""Local text sources: the embedded tiny-Shakespeare corpus and UTF-8 files, directories or globs."""

from __future__ import annotations

import glob
import gzip
import os
from importlib.resources import files
from pathlib import Path

from gqa_sweep.data.common import PATH_HINT, DataError

def load_shakespeare() -> str:
    """The tiny-shakespeare corpus shipped with the package (1,115,394 characters)."""
    blob = files("gqa_sweep").joinpath("corpora", "tinyshakespeare.txt.gz").read_bytes()
    return gzip.decompress(blob).decode("utf-8")


def resolve_text_files(path: str) -> list[Path]:
    """A file, every *.txt under a directory (recursively), or a glob (`**` allowed); sorted."""
    expanded = os.path.expanduser(path)
    if glob.has_magic(expanded):
        found = sorted(Path(p) for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
        if not found:
            raise DataError(f"data.path={path} matches no files; {PATH_HINT}")
        return found
    p = Path(expanded)
    if p.is_dir():
        found = sorted(q for q in p.rglob("*.txt") if q.is_file())
        if not found:
            raise DataError(f"data.path={path} is a directory with no *.txt files; {PATH_HINT}")
        return found
    if p.is_file():
        return [p]
    raise DataError(f"data.path={path} does not exist; {PATH_HINT}")


def load_text(path: str) -> str:
    """Concatenate the files of `path` with newlines; empty files are skipped (e.g. empty __init__.py)."""
    texts = []
    for f in resolve_text_files(path):
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"data.path={path}: {f} is not UTF-8 (invalid byte at offset {e.start}); "
                            "convert it (iconv -t UTF-8) or leave it out of data.path") from None
        if text:
            texts.append(text)
    if not texts:
        raise DataError(f"data.path={path}: the file(s) are empty; {PATH_HINT} with some text in it")
    return "\n".join(texts)

"""Local text as one string (small corpora, tests and tools): the streaming reader is sources.TextSource."""

from __future__ import annotations

from gqa_sweep.data.common import PATH_HINT, DataError
from gqa_sweep.data.sources import TextSource, load_shakespeare, resolve_files

__all__ = ["load_shakespeare", "load_text", "resolve_files"]


def load_text(path: str, suffixes: list[str] | None = None, encoding_errors: str = "strict") -> str:
    """The documents of `path` joined with newlines (reads everything: for small corpora only)."""
    src = TextSource(path, suffixes, encoding_errors=encoding_errors)
    src.structured = True  # whole files, no position split
    docs: dict[int, list[str]] = {}
    for p in src.pieces():
        docs.setdefault(p.doc, []).append(p.text)
    text = "\n".join("".join(parts) for parts in docs.values())
    if not text:
        raise DataError(f"data.path={path}: the file(s) are empty; {PATH_HINT} with some text in it")
    return text

"""What every data source shares: the error type, the token dtype rule and atomic writes."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

CACHE_FORMAT = 2  # bump when the shard layout, the split or the tokenization changes (2: streaming shards)
PATH_HINT = "pass an existing text file, directory or glob"
LOCAL_HINT = "use a local file instead: data=text data.path=FILE"


class DataError(ValueError):
    """Bad data configuration or unusable corpus; the message is one line that names the fix."""


def atomic_dir(final: Path, build) -> bool:
    """Build a directory in a temp sibling, then rename it into place; False if another job won the race."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        os.replace(tmp, final)  # atomic; fails if `final` already exists and is non-empty
        return True
    except OSError:
        if not (final / "meta.json").exists():
            raise
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(path: Path, write) -> None:
    """`write(f)` into a temp sibling, fsync, then rename: a reader sees the whole file or none of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab <= 65,536, GPT-2's 50,257 included), else uint32 (Llama-3, Qwen)."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)

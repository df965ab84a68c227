"""What every data source shares: the error type and the atomic on-disk cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

CACHE_FORMAT = 1  # bump when the cached layout or tokenization changes
PATH_HINT = "pass an existing UTF-8 text file, directory or glob"
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


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)

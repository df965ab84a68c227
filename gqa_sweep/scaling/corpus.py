"""The ladder's corpus: build-corpus.sh's two sources, English only, shuffled by document, as one UTF-8 file.

data=text splits train/val at a character position, so the order of the text decides what validation measures.
Concatenated as shipped (gcide.txt, then the kernel docs in file order), the last 10 % is the end of the kernel
docs: mostly `translations_*` (Chinese, Japanese, Korean, Italian, Spanish), which a BPE-512 model trained on
English never learns, so val loss rose while train loss fell (measured: s1 at lr 1e-2, train 3.82 / val 7.57).
Here the translations are dropped, GCIDE is cut into ~4 KB pieces at line ends, and every piece and kernel
document is shuffled with a fixed seed, so train and val are draws from the same mix.
    python -m gqa_sweep.scaling.corpus BUILD_DIR OUT_FILE   (BUILD_DIR: the output dir of build-corpus.sh)
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from gqa_sweep.data.sources import split_text

PIECE = 4096  # characters per GCIDE piece (cut at line ends): entries shuffle in among the kernel documents


def build(build_dir: str | Path, out: str | Path, seed: int = 0) -> int:
    d = Path(build_dir)
    docs = [p.read_text(encoding="utf-8", errors="replace") for p in sorted((d / "kernel-docs").glob("*.txt"))
            if not p.name.startswith("translations_")]
    gcide = (d / "gcide.txt").read_bytes().decode("utf-8", errors="replace")  # 3 stray cp1252 bytes upstream
    parts = docs + split_text(gcide, PIECE)
    random.Random(seed).shuffle(parts)
    text = "\n".join(parts)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text, encoding="utf-8")
    return len(text)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m gqa_sweep.scaling.corpus BUILD_DIR OUT_FILE")
    print(f"{build(sys.argv[1], sys.argv[2]):,} characters -> {sys.argv[2]}")

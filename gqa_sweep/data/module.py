"""LightningDataModule: a data config -> token shards (prepared once, cached) -> memory-mapped windows.

Every run of a sweep must see the same data whatever G is: the split is fixed by the data config alone (by
document, or by position for a corpus without documents), training batches are a pure function of
(seed, step, rank) (see loader.py), and validation windows are evenly spaced over the val split. Shards are
written by the streaming prepare (prepare.py) under `cache_dir`, keyed by the source's identity and the
tokenizer, and opened here as np.memmap: no corpus text is read on a cache hit, and neither time to the first
batch nor RAM grows with the corpus.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from gqa_sweep.data.common import DataError
from gqa_sweep.data.loader import (
    EveryStep,
    ResumableLoader,
    StepBatches,
    WindowDataset,
    even_offsets,
)
from gqa_sweep.data.spec import check_data, data_label, tokenizer_label

__all__ = ["CorpusDataModule", "ResumableLoader"]


class CorpusDataModule(L.LightningDataModule):
    """Corpus -> shards -> seeded train batches and fixed val windows.

    Call `prepare()` before building the model (it sets `vocab_size_actual`); `setup()` calls it too.
    """

    def __init__(
        self,
        source: str = "shakespeare",
        path: str | None = None,
        name: str | None = None,
        config: str | None = None,
        split: str = "train",
        text_field: str = "text",
        tokenizer: str | None = "char",
        vocab_size: int | None = 1024,
        block_size: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        val_batches: int = 8,
        seed: int = 0,
        max_steps: int = 1000,
        cache_dir: str = "~/.cache/gqa-sweep",
        num_workers: int = 0,
        suffixes: list[str] | None = None,
        encoding_errors: str = "strict",
        bpe_sample_bytes: int | None = None,
        streaming: bool = False,
        num_proc: int | None = None,
        shard_tokens: int | None = None,
        delimiter: str = "auto",
        dtype: str | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        own = ("self", "seed", "max_steps", "progress", "__class__")
        self.cfg = {k: v for k, v in locals().items() if k not in own}
        check_data({**self.cfg, "max_steps": max_steps})
        self.source, self.path = source, path
        self.block_size, self.batch_size = block_size, batch_size
        self.val_fraction, self.val_batches = val_fraction, val_batches
        self.seed, self.max_steps, self.num_workers = seed, max_steps, num_workers
        self.cache_dir = Path(os.path.expanduser(cache_dir))
        self.show_progress = progress
        self.name = data_label(self.cfg)
        self.tokenizer_label = tokenizer_label(self.cfg)
        self.tokenizer = None
        self.cache_path: Path | None = None
        self.cache_hit = False
        self.meta: dict = {}
        self._prepared = False

    # -- preparation

    def prepare(self) -> None:
        """Prepare the shards (or find them in the cache) and open them; idempotent."""
        if self._prepared:
            return
        from gqa_sweep.data.progress import Progress
        from gqa_sweep.data.tokens import open_prepared, open_tokens

        if self.source == "tokens":
            corpus = open_tokens(self.cfg)
            self.cache_hit = True
        else:
            from gqa_sweep.data.prepare import prepare

            out = prepare(self.cfg, Progress(self.show_progress), on_hit=self._hit)
            corpus = open_prepared(out)
            self.cache_path = out
        self.tokenizer, self.meta = corpus.tokenizer, corpus.meta
        self.train_data, self.val_data = corpus.train, corpus.val
        self.vocab_size_actual = corpus.vocab_size
        self.train_tokens, self.val_tokens = len(corpus.train), len(corpus.val)
        if self.tokenizer is not None and self.source != "tokens" and self.tokenizer_label in ("bpe", "char"):
            self.tokenizer_label = self.tokenizer.label if self.tokenizer_label == "bpe" else "char"
        self._check_block_size(self.train_tokens, self.val_tokens)
        self._prepared = True

    def _hit(self, hit: bool) -> None:
        self.cache_hit = hit

    def _check_block_size(self, n_train: int, n_val: int) -> None:
        # A window needs block_size + 1 tokens (inputs plus the shifted targets).
        limit = min(n_train, n_val) - 1
        if self.block_size > limit:
            fix = f"use data.block_size<={limit} or more text" if limit >= 1 else "use more text"
            raise DataError(
                f"data.block_size={self.block_size} is larger than the corpus allows ({n_train} train / {n_val} "
                f"val tokens with data.val_fraction={self.val_fraction}); {fix}"
            )

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    # -- tokens

    def _require_prepared(self):
        if not self._prepared:
            raise RuntimeError("CorpusDataModule.prepare() must be called first")
        return self.tokenizer

    def encode(self, text: str) -> list[int]:
        tok = self._require_prepared()
        if tok is None:
            raise DataError("these token files have no tokenizer; pass data.tokenizer=tiktoken:gpt2 or a "
                            "tokenizer.json to encode text")
        return tok.encode(text)

    def decode(self, ids) -> str:
        tok = self._require_prepared()
        if tok is None:
            raise DataError("these token files have no tokenizer; pass data.tokenizer=... to decode ids")
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return tok.decode(ids)

    # -- loaders

    def _world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.world_size, t.global_rank) if t is not None else (1, 0)

    def train_batches(self, world: int = 1, rank: int = 0) -> StepBatches:
        self._require_prepared()
        return StepBatches(self.train_data, self.block_size, self.batch_size, self.max_steps, self.seed, world, rank)

    def train_starts(self, step: int, world: int = 1) -> np.ndarray:
        """The global window starts of one step (B * world of them)."""
        return self.train_batches(world).starts(step) if world == 1 else np.stack(
            [self.train_batches(world, r).starts(step) for r in range(world)], 1).reshape(-1)

    def val_offsets(self) -> torch.Tensor:
        self._require_prepared()
        return even_offsets(self.val_tokens, self.block_size + 1, self.val_batches * self.batch_size)

    def train_dataloader(self) -> DataLoader:
        """Under DDP, step s trains on the windows of step s on one device with batch B*W, split over the W
        ranks; each rank computes its own part (no sampler: the dataset's item s is the batch of step s)."""
        world, rank = self._world()
        batches = self.train_batches(world, rank)
        return ResumableLoader(batches, batch_size=None, sampler=EveryStep(batches, world, rank),
                               num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                               persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(WindowDataset(self.val_data, self.val_offsets(), self.block_size),
                          batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available())

    def sample_prompt(self, batch_size: int, length: int) -> torch.LongTensor:
        """Fixed prompts: `batch_size` windows of `length` tokens evenly spaced over the val split."""
        self._require_prepared()
        if batch_size <= 0:
            raise DataError(f"prompt batch_size={batch_size} must be a positive integer")
        if not 0 < length <= self.val_tokens:
            raise DataError(f"prompt length={length} must be in [1, {self.val_tokens}] (val split tokens)")
        starts = even_offsets(self.val_tokens, length, batch_size).tolist()
        return torch.from_numpy(np.stack([self.val_data.window(o, length) for o in starts]))

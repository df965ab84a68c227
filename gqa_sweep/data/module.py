"""LightningDataModule: corpus -> tokenizer (cached) -> token arrays -> fixed train/val split -> windows.

Every run of a sweep must see the same data whatever G is: the split is fixed by `val_fraction` alone,
training windows come from a generator seeded by `seed` alone (precomputed, never shuffled by the loader),
and validation windows are evenly spaced over the val split. Tokenized corpora are cached under
`cache_dir`, keyed by the corpus content and the tokenizer settings, and written atomically so that
parallel jobs can share the cache.

The split is taken on the *text* at character `(1 - val_fraction) * len(text)` and each side is
tokenized on its own: for `char` this is exactly the first (1 - val_fraction) of the token stream, for
`byte` it never cuts a UTF-8 character, and for `bpe` it lets the tokenizer be trained on the train text
only without any val text leaking into train tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from itertools import islice
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from gqa_sweep.data.common import CACHE_FORMAT, PATH_HINT, DataError, atomic_dir, token_dtype
from gqa_sweep.data.hf import load_hf
from gqa_sweep.data.text import load_shakespeare, load_text
from gqa_sweep.data.tokenizers import BpeTokenizer, ByteTokenizer, CharTokenizer, Tokenizer, encode_corpus

SOURCES = ("shakespeare", "text", "hf")
TOKENIZERS = ("char", "byte", "bpe")


# ------------------------------------------------------------------------------------------------- datasets


class WindowDataset(Dataset):
    """(x, y) pairs of `block_size` tokens starting at precomputed offsets; y is x shifted by one.

    `shift` (set by ResumableLoader) makes item i the window at offsets[i + shift].
    """

    def __init__(self, tokens: np.ndarray, offsets: torch.Tensor, block_size: int) -> None:
        self.tokens, self.offsets, self.block_size = tokens, offsets, block_size
        self.shift = 0

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        o = int(self.offsets[i + self.shift])
        w = torch.from_numpy(self.tokens[o : o + self.block_size + 1].astype(np.int64))
        return w[:-1], w[1:]


class ResumableLoader(DataLoader):
    """A DataLoader whose position goes into Lightning checkpoints (the `state_dict`/`load_state_dict` protocol).

    Lightning restores the epoch's batch index on resume but restarts a plain loader from its first batch, so
    a resumed run would see its first batches twice. Here the next pass starts at the saved batch instead, on
    every rank: with a (non-shuffling) DistributedSampler rank r reads items r, r+W, ..., so shifting the
    dataset by batches * batch_size * W continues each rank's own sequence. The loader has a length, so
    Lightning does not prefetch from it and the count is the number of batches actually trained on.
    """

    _position = 0  # batches handed out in the current pass
    _resume_at = 0  # batch to start the next pass at (from a checkpoint)

    def state_dict(self) -> dict[str, int]:
        return {"batches": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = int(state["batches"])

    def __iter__(self):
        start, self._resume_at = self._resume_at, 0
        self.dataset.shift = start * self.batch_size * getattr(self.sampler, "num_replicas", 1)
        self._position = start
        for batch in islice(super().__iter__(), len(self) - start):  # the rest of the pass, then stop
            self._position += 1
            yield batch


def even_offsets(n_tokens: int, length: int, count: int) -> torch.Tensor:
    """`count` window starts evenly spaced so that every window of `length` tokens fits in `n_tokens`."""
    return torch.linspace(0, n_tokens - length, count).round().long()


# ------------------------------------------------------------------------------------------------- module


class CorpusDataModule(L.LightningDataModule):
    """Corpus -> tokenizer -> fixed split -> seeded train windows and fixed val windows.

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
        tokenizer: str = "char",
        vocab_size: int = 1024,
        block_size: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        val_batches: int = 8,
        seed: int = 0,
        max_steps: int = 1000,
        cache_dir: str = "~/.cache/gqa-sweep",
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.source, self.path = source, path
        self.hf_name, self.hf_config, self.split, self.text_field = name, config, split, text_field
        self.tokenizer_kind, self.bpe_vocab_size = tokenizer, vocab_size
        self.block_size, self.batch_size = block_size, batch_size
        self.val_fraction, self.val_batches = val_fraction, val_batches
        self.seed, self.max_steps, self.num_workers = seed, max_steps, num_workers
        self.cache_dir = Path(os.path.expanduser(cache_dir))
        self._validate()
        self.name = self._label()
        self.tokenizer_label = f"bpe-{vocab_size}" if tokenizer == "bpe" else tokenizer
        self.tokenizer: Tokenizer | None = None
        self.cache_path: Path | None = None
        self.cache_hit = False

    def _validate(self) -> None:
        if self.source not in SOURCES:
            raise DataError(f"data.source={self.source} is unknown; use one of {', '.join(SOURCES)}")
        if self.tokenizer_kind not in TOKENIZERS:
            raise DataError(f"data.tokenizer={self.tokenizer_kind} is unknown; use one of {', '.join(TOKENIZERS)}")
        if self.source == "text" and not self.path:
            raise DataError(f"data.path is required for data.source=text; {PATH_HINT}")
        if self.source == "hf" and not self.hf_name:
            raise DataError("data.name is required for data.source=hf; e.g. data.name=wikitext "
                            "data.config=wikitext-2-raw-v1")
        if not 0.0 < self.val_fraction < 1.0:
            raise DataError(f"data.val_fraction={self.val_fraction} must be in (0, 1); e.g. data.val_fraction=0.1")
        for key in ("block_size", "batch_size", "val_batches", "max_steps"):
            if getattr(self, key) <= 0:
                raise DataError(f"data.{key}={getattr(self, key)} must be a positive integer")
        if self.num_workers < 0:
            raise DataError(f"data.num_workers={self.num_workers} must be >= 0")
        if self.tokenizer_kind == "bpe" and self.bpe_vocab_size < 257:
            raise DataError(f"data.vocab_size={self.bpe_vocab_size} is too small for byte-level BPE "
                            "(256 bytes + merges); use data.vocab_size>=257")

    def _label(self) -> str:
        if self.source == "text":
            return f"text:{os.path.basename(os.path.normpath(self.path))}"
        if self.source == "hf":
            return f"hf:{self.hf_name}" + (f"/{self.hf_config}" if self.hf_config else "")
        return self.source

    # -- preparation

    def load_corpus(self) -> str:
        if self.source == "text":
            return load_text(self.path)
        if self.source == "hf":
            return load_hf(self.hf_name, self.hf_config, self.split, self.text_field)
        return load_shakespeare()

    def _cache_key(self, corpus: str) -> str:
        settings = {
            "format": CACHE_FORMAT,
            "corpus_sha256": hashlib.sha256(corpus.encode("utf-8")).hexdigest(),
            "tokenizer": self.tokenizer_kind,
            "vocab_size": self.bpe_vocab_size if self.tokenizer_kind == "bpe" else None,
            "val_fraction": self.val_fraction,  # the split point decides which text BPE trains on
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]

    def _tokenize(self, corpus: str) -> tuple[Tokenizer, np.ndarray, np.ndarray]:
        cut = int(len(corpus) * (1 - self.val_fraction))
        train_text, val_text = corpus[:cut], corpus[cut:]
        if self.tokenizer_kind == "char":
            tok: Tokenizer = CharTokenizer("".join(sorted(set(corpus))))
        elif self.tokenizer_kind == "byte":
            tok = ByteTokenizer()
        else:
            tok = BpeTokenizer.train(train_text, self.bpe_vocab_size)
        dtype = token_dtype(tok.vocab_size)
        return tok, encode_corpus(tok, train_text, dtype), encode_corpus(tok, val_text, dtype)

    def _write_cache(self, tok: Tokenizer, train: np.ndarray, val: np.ndarray) -> None:
        def build(d: Path) -> None:
            tok.save(d / "tokenizer.json")
            np.save(d / "train.npy", train)
            np.save(d / "val.npy", val)
            meta = {"name": self.name, "tokenizer": self.tokenizer_label, "vocab_size": tok.vocab_size,
                    "train_tokens": len(train), "val_tokens": len(val)}
            (d / "meta.json").write_text(json.dumps(meta, indent=1))

        atomic_dir(self.cache_path, build)

    def _read_cache(self) -> tuple[Tokenizer, np.ndarray, np.ndarray]:
        d = self.cache_path
        loaders = {"char": CharTokenizer.load, "byte": lambda _: ByteTokenizer(), "bpe": BpeTokenizer.load}
        tok = loaders[self.tokenizer_kind](d / "tokenizer.json")
        return tok, np.load(d / "train.npy"), np.load(d / "val.npy")

    def prepare(self) -> None:
        """Load the corpus, build or load the tokenizer and token arrays (cached); idempotent."""
        if self.tokenizer is not None:
            return
        corpus = self.load_corpus()
        self.cache_path = self.cache_dir / self._cache_key(corpus)
        self.cache_hit = (self.cache_path / "meta.json").exists()
        if self.cache_hit:
            tok, train, val = self._read_cache()
        else:
            tok, train, val = self._tokenize(corpus)
            self._write_cache(tok, train, val)
        self._check_block_size(len(train), len(val))
        self.tokenizer, self.train_data, self.val_data = tok, train, val
        self.vocab_size_actual = tok.vocab_size
        self.train_tokens, self.val_tokens = len(train), len(val)

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

    def _require_prepared(self) -> Tokenizer:
        if self.tokenizer is None:
            raise RuntimeError("CorpusDataModule.prepare() must be called first")
        return self.tokenizer

    def encode(self, text: str) -> list[int]:
        return self._require_prepared().encode(text)

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._require_prepared().decode(ids)

    # -- loaders

    def train_offsets(self, world_size: int = 1) -> torch.Tensor:
        """max_steps * batch_size * world_size window starts from a generator seeded by `seed` alone."""
        self._require_prepared()
        g = torch.Generator().manual_seed(self.seed)
        high = self.train_tokens - self.block_size  # exclusive: the last window ends at the last token
        return torch.randint(0, high, (self.max_steps * self.batch_size * world_size,), generator=g)

    def val_offsets(self) -> torch.Tensor:
        self._require_prepared()
        return even_offsets(self.val_tokens, self.block_size + 1, self.val_batches * self.batch_size)

    def _loader(self, dataset: Dataset, cls: type[DataLoader] = DataLoader, sampler=None) -> DataLoader:
        # No shuffling: the order is the offsets' order, identical for every G.
        return cls(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Under DDP, step s trains on windows [s*B*W, (s+1)*B*W) split over the W ranks: the same windows as one
        device with batch B*W. Lightning's own sampler would shuffle them, so a non-shuffling one is set here."""
        world = self.trainer.world_size if self.trainer is not None else 1
        dataset = WindowDataset(self.train_data, self.train_offsets(world), self.block_size)
        sampler = None
        if world > 1:
            sampler = DistributedSampler(dataset, num_replicas=world, rank=self.trainer.global_rank, shuffle=False)
        return self._loader(dataset, ResumableLoader, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(WindowDataset(self.val_data, self.val_offsets(), self.block_size))

    def sample_prompt(self, batch_size: int, length: int) -> torch.LongTensor:
        """Fixed prompts: `batch_size` windows of `length` tokens evenly spaced over the val split."""
        self._require_prepared()
        if batch_size <= 0:
            raise DataError(f"prompt batch_size={batch_size} must be a positive integer")
        if not 0 < length <= self.val_tokens:
            raise DataError(f"prompt length={length} must be in [1, {self.val_tokens}] (val split tokens)")
        starts = even_offsets(self.val_tokens, length, batch_size).tolist()
        rows = [self.val_data[o : o + length].astype(np.int64) for o in starts]
        return torch.from_numpy(np.stack(rows))

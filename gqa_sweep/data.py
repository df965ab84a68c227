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

import glob
import gzip
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
from contextlib import contextmanager, nullcontext
from importlib.resources import files
from itertools import islice
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import urlparse

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

SOURCES = ("shakespeare", "text", "hf")
TOKENIZERS = ("char", "byte", "bpe")
CACHE_FORMAT = 1  # bump when the cached layout or tokenization changes
HUB_PROBE_TIMEOUT_S = 3.0
_PATH_HINT = "pass an existing UTF-8 text file, directory or glob"
_LOCAL_HINT = "use a local file instead: data=text data.path=FILE"


class DataError(ValueError):
    """Bad data configuration or unusable corpus; the message is one line that names the fix."""


# ---------------------------------------------------------------------------------------------- tokenizers


class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, path: Path) -> None: ...


class CharTokenizer:
    """One id per distinct character of the whole corpus (sorted), so val characters always have an id."""

    def __init__(self, chars: str) -> None:
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise DataError(f"character {e.args[0]!r} is not in the char vocabulary of this corpus; "
                            "use data.tokenizer=byte or bpe to encode any text") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"type": "char", "chars": self.chars}), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> CharTokenizer:
        return cls(json.loads(path.read_text(encoding="utf-8"))["chars"])


class ByteTokenizer:
    """UTF-8 bytes, vocabulary 256; decoding replaces bytes that do not form valid UTF-8."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"type": "byte"}), encoding="utf-8")


class BpeTokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenization, no special tokens) from the `tokenizers` library."""

    def __init__(self, tok) -> None:
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BpeTokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes
            special_tokens=[],
            show_progress=False,
        )
        tok.train_from_iterator(_chunks(text), trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])

    def save(self, path: Path) -> None:
        self.tok.save(str(path))

    @classmethod
    def load(cls, path: Path) -> BpeTokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_file(str(path)))


def _chunks(text: str, size: int = 1 << 20) -> Iterator[str]:
    """Pieces of about `size` characters, each ending at a newline when there is one."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def _encode_corpus(tok: Tokenizer, text: str, dtype: np.dtype) -> np.ndarray:
    """Token ids of a whole corpus, encoded in newline-ended chunks so that memory stays bounded.

    BPE encodes 8 chunks per call on the library's threads; its pre-tokenizer then sees a chunk end as the
    end of a whitespace run, so a token may differ from `encode(text)` at the ~1 MiB chunk seams only.
    """
    pieces = list(_chunks(text))
    if isinstance(tok, BpeTokenizer):
        ids = (e.ids for i in range(0, len(pieces), 8) for e in tok.tok.encode_batch(pieces[i : i + 8]))
    else:
        ids = (tok.encode(p) for p in pieces)
    return np.concatenate([np.zeros(0, dtype)] + [np.asarray(x, dtype=dtype) for x in ids])


# ------------------------------------------------------------------------------------------------- sources


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
            raise DataError(f"data.path={path} matches no files; {_PATH_HINT}")
        return found
    p = Path(expanded)
    if p.is_dir():
        found = sorted(q for q in p.rglob("*.txt") if q.is_file())
        if not found:
            raise DataError(f"data.path={path} is a directory with no *.txt files; {_PATH_HINT}")
        return found
    if p.is_file():
        return [p]
    raise DataError(f"data.path={path} does not exist; {_PATH_HINT}")


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
        raise DataError(f"data.path={path}: the file(s) are empty; {_PATH_HINT} with some text in it")
    return "\n".join(texts)


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """A TCP connect to the Hub (or the HTTPS proxy), bounded in time even when DNS hangs."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Offline mode for this call only: `datasets` then answers from its local cache without retrying."""
    import datasets.config
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def load_hf(name: str, config: str | None, split: str, text_field: str) -> str:
    """Text of one split of a Hugging Face dataset, rows joined with newlines; offline uses the HF cache."""
    import datasets

    label = f"hf:{name}" + (f"/{config}" if config else "")
    offline = not _hub_reachable()
    try:
        with _hub_offline() if offline else nullcontext():
            ds = datasets.load_dataset(name, config, split=split)
    except ConnectionError as e:
        raise DataError(f"{label} could not be reached (no connection to the Hugging Face Hub and not in the "
                        f"local HF cache); {_LOCAL_HINT}") from e
    except (FileNotFoundError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = " or " + _LOCAL_HINT if offline else ""
        raise DataError(f"{label} split={split} could not be loaded ({first_line}); check data.name, "
                        f"data.config and data.split{hint}") from e
    if text_field not in ds.column_names:
        raise DataError(f"data.text_field={text_field} is not a column of {label}; "
                        f"columns: {', '.join(ds.column_names)}")
    return "\n".join(t for t in ds[text_field] if t is not None)


# ------------------------------------------------------------------------------------------------- cache


def _atomic_dir(final: Path, build) -> bool:
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


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


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
            raise DataError(f"data.path is required for data.source=text; {_PATH_HINT}")
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
        dtype = _token_dtype(tok.vocab_size)
        return tok, _encode_corpus(tok, train_text, dtype), _encode_corpus(tok, val_text, dtype)

    def _write_cache(self, tok: Tokenizer, train: np.ndarray, val: np.ndarray) -> None:
        def build(d: Path) -> None:
            tok.save(d / "tokenizer.json")
            np.save(d / "train.npy", train)
            np.save(d / "val.npy", val)
            meta = {"name": self.name, "tokenizer": self.tokenizer_label, "vocab_size": tok.vocab_size,
                    "train_tokens": len(train), "val_tokens": len(val)}
            (d / "meta.json").write_text(json.dumps(meta, indent=1))

        _atomic_dir(self.cache_path, build)

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

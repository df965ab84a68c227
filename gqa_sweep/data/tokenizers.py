"""Tokenizers: char, byte and our byte-level BPE (trained here), a `tokenizers` tokenizer.json (local file or a
cached HF hub name) and tiktoken encodings, all offline.

Every tokenizer has the same small surface: `vocab_size`, `encode`, `encode_batch` (many texts at once, on the
library's threads: tokenizers' Rayon pool, tiktoken's thread pool), `decode`, `save`, `identity()` (what the
shard cache is keyed on: a name and the sha256 of its files) and a document delimiter: `delimiter` (an id) with
`delimiter_kind` "eot" (after each document) or "bos" (before it). Where the tokenizer has its own special
token (GPT-2's <|endoftext|>, Llama-3's <|end_of_text|>, ...) that is the delimiter; char, byte and our BPE
add one id at the end of their vocabulary when the corpus has documents to separate.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

from gqa_sweep.data.common import DataError

EOT = "<|endoftext|>"
EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[SEP]")
BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "<|bos|>", "[CLS]")
BUILTIN = ("char", "byte", "bpe")
# GPT-2's pre-tokenizer split (tiktoken's r50k/p50k/gpt2 pat_str), for local rank files with no pattern of their own
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Base:
    delimiter: int | None = None
    delimiter_kind: str | None = None
    label: str = ""

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def identity(self) -> dict:
        return {"label": self.label}


class CharTokenizer(Base):
    """One id per distinct character of the whole corpus (sorted), so val characters always have an id; with
    `eot`, one more id (the last) separates documents."""

    label = "char"

    def __init__(self, chars: str, eot: bool = False) -> None:
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars) + int(eot)
        if eot:
            self.delimiter, self.delimiter_kind = len(chars), "eot"

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise DataError(f"character {e.args[0]!r} is not in the char vocabulary of this corpus; "
                            "use data.tokenizer=byte or bpe to encode any text") from None

    def decode(self, ids) -> str:
        n = len(self.chars)
        return "".join(self.chars[int(i)] if int(i) < n else EOT for i in ids)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"type": "char", "chars": self.chars, "eot": self.delimiter is not None}),
                        encoding="utf-8")

    def identity(self) -> dict:
        return {"label": "char", "chars_sha256": hashlib.sha256(self.chars.encode()).hexdigest()}

    @classmethod
    def load(cls, path: Path) -> CharTokenizer:
        d = json.loads(path.read_text(encoding="utf-8"))
        return cls(d["chars"], bool(d.get("eot", False)))


class ByteTokenizer(Base):
    """UTF-8 bytes (ids 0-255; 256 is the delimiter when there is one); decoding replaces invalid UTF-8."""

    label = "byte"

    def __init__(self, eot: bool = False) -> None:
        self.vocab_size = 256 + int(eot)
        if eot:
            self.delimiter, self.delimiter_kind = 256, "eot"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]):
        import numpy as np

        return [np.frombuffer(t.encode("utf-8"), np.uint8) for t in texts]  # no list of ints

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"type": "byte", "eot": self.delimiter is not None}), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> ByteTokenizer:
        return cls(bool(json.loads(path.read_text(encoding="utf-8")).get("eot", False)))


class HFTokenizer(Base):
    """A `tokenizers.Tokenizer` (a tokenizer.json): our trained BPE, a local file or a cached hub tokenizer.

    Texts are encoded without the tokenizer's own post-processing (no automatic BOS per piece): the delimiter is
    added once per document by the prepare step.
    """

    def __init__(self, tok, label: str, files: list[Path] | None = None, eos: str | None = None,
                 bos: str | None = None) -> None:
        self.tok, self.label, self.files = tok, label, files or []
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        vocab = tok.get_vocab(with_added_tokens=True)
        eos = eos if eos in vocab else next((t for t in EOS_NAMES if t in vocab), None)
        bos = bos if bos in vocab else next((t for t in BOS_NAMES if t in vocab), None)
        if eos is not None:
            self.delimiter, self.delimiter_kind, self.delimiter_token = vocab[eos], "eot", eos
        elif bos is not None:
            self.delimiter, self.delimiter_kind, self.delimiter_token = vocab[bos], "bos", bos

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: Path) -> None:
        self.tok.save(str(path))

    def identity(self) -> dict:
        return {"label": self.label, "sha256": [sha256_file(f) for f in self.files]}


class BpeTokenizer(HFTokenizer):
    """Byte-level BPE (GPT-2 style pre-tokenization) trained here; <|endoftext|> is its last id when the corpus
    has documents to separate."""

    def __init__(self, tok) -> None:
        super().__init__(tok, f"bpe-{tok.get_vocab_size(with_added_tokens=True)}")

    @classmethod
    def train(cls, texts, vocab_size: int, eot: bool = False) -> BpeTokenizer:
        """Train on an iterable of texts (a bounded sample of the train documents) or one text."""
        if isinstance(texts, str):
            texts = [texts]
        from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
        from tokenizers import Tokenizer as Tok

        tok = Tok(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - int(eot),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes
            special_tokens=[],
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        if eot:
            tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> BpeTokenizer:
        from tokenizers import Tokenizer as Tok

        return cls(Tok.from_file(str(path)))

    def identity(self) -> dict:
        return {"label": self.label}


def _special_names(config: Path) -> tuple[str | None, str | None]:
    """eos_token / bos_token of a tokenizer_config.json next to a tokenizer.json, when there is one."""
    if not config.is_file():
        return None, None
    d = json.loads(config.read_text(encoding="utf-8"))

    def name(v):
        return v.get("content") if isinstance(v, dict) else v

    return name(d.get("eos_token")), name(d.get("bos_token"))


def hub_cache_dir() -> Path:
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    return Path(os.environ.get("HF_HUB_CACHE", os.environ.get("HUGGINGFACE_HUB_CACHE", home / "hub"))).expanduser()


def tokenizer_file(spec: str) -> Path:
    """The tokenizer.json of a local path (a file or a directory holding one) or of a hub name in the HF cache.

    The hub is never contacted: a name that is not cached fails at once, saying where to put the file.
    """
    p = Path(os.path.expanduser(spec))
    if p.is_file():
        return p
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            return p / "tokenizer.json"
        raise DataError(f"data.tokenizer={spec} is a directory without a tokenizer.json; pass the file itself")
    if spec.endswith(".json") or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise DataError(f"data.tokenizer={spec} does not exist; pass a tokenizer.json path, a cached HF hub name, "
                        "tiktoken:NAME or one of char, byte, bpe")
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(spec, "tokenizer.json", cache_dir=str(hub_cache_dir()))
    if isinstance(found, str):
        return Path(found)
    where = hub_cache_dir() / f"models--{spec.replace('/', '--')}"
    raise DataError(f"data.tokenizer={spec} is not in the local HF cache ({where}); on a machine with a network run "
                    f"`hf download {spec} tokenizer.json tokenizer_config.json` and copy the cache here, or pass "
                    "data.tokenizer=/path/to/tokenizer.json")


def load_tokenizer_file(spec: str) -> HFTokenizer:
    from tokenizers import Tokenizer as Tok

    path = tokenizer_file(spec)
    try:
        tok = Tok.from_file(str(path))
    except Exception as e:
        raise DataError(f"data.tokenizer={spec}: {path} is not a tokenizers tokenizer.json ({e}); pass a "
                        "tokenizer.json saved by `tokenizers` or `transformers`") from None
    eos, bos = _special_names(path.with_name("tokenizer_config.json"))
    files = [path] + [f for f in [path.with_name("tokenizer_config.json")] if f.is_file()]
    return HFTokenizer(tok, f"tokenizer.json:{spec}", files, eos, bos)


# ------------------------------------------------------------------------------------------------- tiktoken


class TiktokenTokenizer(Base):
    """A tiktoken encoding: `tiktoken:NAME` from tiktoken's cache, or `tiktoken:/path/ranks.tiktoken` (a rank file
    in tiktoken's format, GPT-2's split pattern, <|endoftext|> after the last rank)."""

    def __init__(self, enc, label: str, files: list[Path] | None = None) -> None:
        self.enc, self.label, self.files = enc, label, files or []
        self.vocab_size = enc.n_vocab
        if EOT in enc._special_tokens:
            self.delimiter, self.delimiter_kind, self.delimiter_token = enc._special_tokens[EOT], "eot", EOT

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"type": "tiktoken", "label": self.label, **self.identity()}), encoding="utf-8")

    def identity(self) -> dict:
        return {"label": self.label, "sha256": [sha256_file(f) for f in self.files]}


def tiktoken_cache_dir() -> str:
    import tempfile

    return os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or \
        os.path.join(tempfile.gettempdir(), "data-gym-cache")


class _NotCached(Exception):
    pass


@contextmanager
def _tiktoken_offline():
    """tiktoken reads its cache and would download what is missing: here a missing file raises instead."""
    import tiktoken.load as tl

    saved = tl.read_file

    def read_file(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise _NotCached(blobpath)
        return saved(blobpath)

    tl.read_file = read_file
    try:
        yield
    finally:
        tl.read_file = saved


def load_tiktoken(spec: str) -> TiktokenTokenizer:
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    name = spec.split(":", 1)[1]
    p = Path(os.path.expanduser(name))
    if p.suffix == ".tiktoken" or p.is_file():
        if not p.is_file():
            raise DataError(f"data.tokenizer={spec}: {p} does not exist; pass an existing .tiktoken rank file")
        ranks = load_tiktoken_bpe(str(p))
        enc = tiktoken.Encoding(p.stem, pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens={EOT: len(ranks)})
        return TiktokenTokenizer(enc, f"tiktoken:{p.name}", [p])
    if name not in tiktoken.list_encoding_names():
        raise DataError(f"data.tokenizer={spec} is not a tiktoken encoding; use one of "
                        f"{', '.join(tiktoken.list_encoding_names())} or tiktoken:/path/to/ranks.tiktoken")
    try:
        with _tiktoken_offline():
            enc = tiktoken.get_encoding(name)
    except _NotCached as e:
        url = e.args[0]
        key = hashlib.sha1(url.encode()).hexdigest()
        raise DataError(f"data.tokenizer={spec} is not in tiktoken's cache: download {url} on a machine with a network "
                        f"and put it at {os.path.join(tiktoken_cache_dir(), key)} (TIKTOKEN_CACHE_DIR), or pass "
                        f"data.tokenizer=tiktoken:/path/to/{name}.tiktoken") from None
    return TiktokenTokenizer(enc, spec)


def load_named(spec: str) -> Base:
    """A tokenizer that exists before the corpus is read: tiktoken:NAME, a tokenizer.json path, a hub name."""
    if spec.startswith("tiktoken:"):
        return load_tiktoken(spec)
    return load_tokenizer_file(spec)


def is_builtin(spec: str) -> bool:
    return spec in BUILTIN


def load_saved(path: Path, spec: str) -> Base:
    """The tokenizer a prepare saved next to its shards (char/byte/bpe) or the named one again."""
    if spec == "char":
        return CharTokenizer.load(path)
    if spec == "byte":
        return ByteTokenizer.load(path)
    if spec == "bpe":
        return BpeTokenizer.load(path)
    return load_named(spec)

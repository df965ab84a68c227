"""Tokenizers (char, byte, byte-level BPE) and chunked corpus encoding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from gqa_sweep.data.common import DataError

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
        tok.train_from_iterator(chunks(text), trainer=trainer)
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


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of the `tokenizers` ByteLevel pieces."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in keep else next(extra)) for b in range(256)}


def hf_tokenizer(tok: Tokenizer):
    """The tokenizer as a `tokenizers.Tokenizer` with the same ids, for `AutoTokenizer` and pipelines.

    char: a BPE with no merges over the corpus's characters (one token per character); byte: the same over
    the 256 ByteLevel characters with id = byte value; bpe: itself. Decoding concatenates, as ours does.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    if isinstance(tok, BpeTokenizer):
        return tok.tok
    if isinstance(tok, CharTokenizer):
        out = HFTokenizer(models.BPE(vocab=dict(tok.stoi), merges=[]))
        out.decoder = decoders.Fuse()
        return out
    table = bytes_to_unicode()
    out = HFTokenizer(models.BPE(vocab={table[b]: b for b in range(256)}, merges=[]))
    out.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    out.decoder = decoders.ByteLevel()
    return out


def chunks(text: str, size: int = 1 << 20) -> Iterator[str]:
    """Pieces of about `size` characters, each ending at a newline when there is one."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def encode_corpus(tok: Tokenizer, text: str, dtype: np.dtype) -> np.ndarray:
    """Token ids of a whole corpus, encoded in newline-ended chunks so that memory stays bounded.

    BPE encodes 8 chunks per call on the library's threads; its pre-tokenizer then sees a chunk end as the
    end of a whitespace run, so a token may differ from `encode(text)` at the ~1 MiB chunk seams only.
    """
    pieces = list(chunks(text))
    if isinstance(tok, BpeTokenizer):
        ids = (e.ids for i in range(0, len(pieces), 8) for e in tok.tok.encode_batch(pieces[i : i + 8]))
    else:
        ids = (tok.encode(p) for p in pieces)
    return np.concatenate([np.zeros(0, dtype)] + [np.asarray(x, dtype=dtype) for x in ids])

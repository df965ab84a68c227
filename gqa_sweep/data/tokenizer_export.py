"""Our tokenizers as `tokenizers.Tokenizer`s with the same ids (for `AutoTokenizer`, pipelines and gqa-export),
and the delimiter a saved tokenizer.json declares."""

from __future__ import annotations

from pathlib import Path

from gqa_sweep.data.tokenizers import BOS_NAMES, EOS_NAMES, EOT, CharTokenizer, HFTokenizer, TiktokenTokenizer


def delimiter_token_of(tokenizer_json: Path) -> str | None:
    """The document delimiter of a saved tokenizer.json: its end-of-text special token, else its BOS, else None."""
    from tokenizers import Tokenizer as Tok

    tok = Tok.from_file(str(tokenizer_json))
    specials = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    return next((t for t in (*EOS_NAMES, *BOS_NAMES) if t in specials), None)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of the `tokenizers` ByteLevel pieces."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in keep else next(extra)) for b in range(256)}


def hf_tokenizer(tok):
    """The tokenizer as a `tokenizers.Tokenizer` with the same ids, for `AutoTokenizer` and pipelines.

    char: a BPE with no merges over the corpus's characters (one token per character); byte: the same over
    the 256 ByteLevel characters with id = byte value; bpe / tokenizer.json: itself; tiktoken: its ranks as a
    ByteLevel BPE. The delimiter is a special token (<|endoftext|> for ours), which gqa-export declares as eos
    and bos. Decoding concatenates, as ours does.
    """
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Tok

    if isinstance(tok, HFTokenizer):
        return tok.tok
    if isinstance(tok, TiktokenTokenizer):
        return _tiktoken_to_hf(tok)
    if isinstance(tok, CharTokenizer):
        out = Tok(models.BPE(vocab=dict(tok.stoi), merges=[]))
        out.decoder = decoders.Fuse()
    else:
        table = bytes_to_unicode()
        out = Tok(models.BPE(vocab={table[b]: b for b in range(256)}, merges=[]))
        out.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        out.decoder = decoders.ByteLevel()
    if tok.delimiter is not None:
        out.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])  # id = the next one: ours
    return out


def _tiktoken_to_hf(tok: TiktokenTokenizer):
    """tiktoken ranks -> a ByteLevel BPE: a token's merge is the split of its bytes into two ranked parts whose
    ranks are lowest (what tiktoken's merge loop would have produced)."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Tok

    table = bytes_to_unicode()
    ranks = tok.enc._mergeable_ranks

    def s(b: bytes) -> str:
        return "".join(table[x] for x in b)

    vocab, merges = {s(b): r for b, r in ranks.items()}, []
    for b, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(b) == 1:
            continue
        best = min(((ranks[b[:i]], ranks[b[i:]], i) for i in range(1, len(b)) if b[:i] in ranks and b[i:] in ranks
                    and max(ranks[b[:i]], ranks[b[i:]]) < r), default=None)
        if best is not None:
            merges.append((s(b[: best[2]]), s(b[best[2]:])))
    out = Tok(models.BPE(vocab=vocab, merges=merges))
    out.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tok.enc._pat_str), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    out.decoder = decoders.ByteLevel()
    out.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in
                            sorted(tok.enc._special_tokens, key=tok.enc._special_tokens.get)])
    return out

"""The greedy decoders the decode and serve benches time, each a call that restarts at the cache's length.

    eager  our model op by op over the dynamic cache (views of the filled part); `fold` picks the grouped call
    graph  the static-cache step captured once in a CUDA graph and replayed (gqa_sweep/model/decode.py)
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from gqa_sweep.model.cache import Cache
from gqa_sweep.model.decode import StaticDecoder, resolve_mode
from gqa_sweep.model.transformer import DecoderLM


def decode_fn(
    model: DecoderLM, cache: Cache, first: torch.Tensor, new_tokens: int, fold: bool | None = None
) -> Callable[[], torch.Tensor]:
    """Greedy decode of `new_tokens` tokens (B, new_tokens) from `cache` as it is now; every call restarts there."""
    ctx = cache.length

    @torch.no_grad()
    def run() -> torch.Tensor:
        model.set_fold_decode(fold)  # folded and unfolded share one model and cache
        cache.length = ctx
        toks = [first]
        for _ in range(new_tokens):
            toks.append(model(toks[-1], cache)[:, -1].argmax(dim=-1, keepdim=True))
        return torch.cat(toks[1:], dim=1)

    run.cache = cache  # keeps the buffers alive and inspectable
    return run


def static_fn(model: DecoderLM, cache: Cache, first: torch.Tensor, new_tokens: int, mode: str = "graph"):
    """The same greedy decode through the static step. It shares `cache`'s buffers (a shallow copy keeps its own
    length and device position): every step writes its slot before reading it, so both may restart there."""
    decoder = StaticDecoder(model, copy.copy(cache), mode=mode)

    def run() -> torch.Tensor:
        return decoder.generate(first, new_tokens)

    run.cache, run.decoder = cache, decoder
    return run


def decoder_fn(model: DecoderLM, cache: Cache, first: torch.Tensor, new_tokens: int, mode: str):
    """--decode-mode: auto (graph on CUDA, eager elsewhere), eager or graph."""
    mode = resolve_mode(mode, cache.buffers()[0].device)
    return decode_fn(model, cache, first, new_tokens) if mode == "eager" else static_fn(model, cache, first, new_tokens)

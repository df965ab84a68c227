"""Greedy single-token decode over a static KV cache: eager, or captured once in a CUDA graph and replayed.

A decode step of a small model on a GPU is bound by the host (Python and one launch per kernel), not by reading
the weights and the cache, so fewer KV heads cannot show there. Here the cache's write position is a device
tensor (`Cache.make_static`): the step's RoPE rows, its attention mask and its cache writes are all read from it
on the device, and the step writes its greedy token into its own input buffer. Every step then has the same
shapes and addresses, so it is captured once (`torch.cuda.CUDAGraph`) and each new token is one `replay()`.
Eager runs the same step op by op: the CPU path, and the reference the captured one must equal token for token.
GQA and GTA fold each group's query heads into one SDPA call (attention.attend_one); MLA decodes absorbed.
"""

from __future__ import annotations

import torch

from gqa_sweep.model.cache import Cache
from gqa_sweep.model.shape import DECODE_MODES as MODES
from gqa_sweep.model.transformer import DecoderLM


def resolve_mode(mode: str, device: torch.device | str) -> str:
    """auto: graph on CUDA, eager elsewhere; graph off CUDA is an error that names the fix."""
    device = torch.device(device)
    if mode not in MODES:
        raise ValueError(f"decode mode {mode!r}; choose from {', '.join(MODES)}")
    if mode == "auto":
        return "graph" if device.type == "cuda" else "eager"
    if mode == "graph" and device.type != "cuda":
        raise ValueError(f"decode mode graph captures a CUDA graph, but the model is on {device.type}; use eager "
                         "(or auto) there")  # fmt: skip
    return mode


class StaticDecoder:
    """Greedy decode from `cache` as it is now (a prefill or random entries of `cache.length` tokens).

    Every `generate` call restarts at that length, so repeated calls time the same steps and return the same
    tokens. `warmup` eager steps run before a capture (on a side stream, as CUDA graphs need: lazy cuBLAS and
    SDPA workspaces are allocated there, outside the graph); they write past the start, where the mask hides them
    until a real step overwrites them.
    """

    def __init__(self, model: DecoderLM, cache: Cache, mode: str = "auto", warmup: int = 2) -> None:
        device = model.embed.weight.device
        self.mode = resolve_mode(mode, device)
        if cache.length == 0:
            raise ValueError("a static decode continues a cache: prefill the prompt (model(prompt, cache)) first")
        self.model, self.cache, self.start = model.eval(), cache, cache.length
        cache.make_static()
        self.token = torch.zeros(cache.batch_size, 1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        if self.mode == "graph":
            self._capture(warmup)

    @torch.no_grad()
    def _step(self) -> None:
        logits = self.model(self.token, self.cache)[:, -1]
        self.token.copy_(logits.argmax(dim=-1, keepdim=True))

    def _restart(self) -> None:
        self.cache.pos.fill_(self.start)
        self.cache.length = self.start

    def _capture(self, warmup: int) -> None:
        side = torch.cuda.Stream(self.token.device)
        side.wait_stream(torch.cuda.current_stream(self.token.device))
        with torch.cuda.stream(side):
            for _ in range(max(warmup, 1)):
                self._step()
            self._restart()
        torch.cuda.current_stream(self.token.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()  # recorded, not run: pos and the cache are as `_restart` left them
        self._restart()

    @torch.no_grad()
    def generate(self, first: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """The `new_tokens` greedy tokens (B, new_tokens) that follow `first` (B, 1) at the cache's start."""
        limit = self.cache.layers[0][0].shape[2] - self.start
        if not 1 <= new_tokens <= limit:
            raise ValueError(f"new_tokens={new_tokens} must be in [1, {limit}]: the cache holds {self.start} of "
                             f"its {self.start + limit} slots")  # fmt: skip
        self._restart()
        self.token.copy_(first)
        out = torch.empty(first.shape[0], new_tokens, dtype=torch.long, device=first.device)
        for i in range(new_tokens):
            if self.graph is None:
                self._step()
            else:
                self.graph.replay()
                self.cache.length += 1  # the host's count; the device's position advanced in the graph
            out[:, i : i + 1].copy_(self.token)
        return out

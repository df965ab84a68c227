"""`preview=true`: what a sweep would do, before anything is prepared or trained.

The jobs (names, ids, lr, store status), then one line per model size: its non-embedding parameters N (the LM
head included, as the store counts N), train tokens, training FLOPs (tokens x the row's `flops_per_token`) and an
estimated time per run from this machine's measured throughput (the median `model_flops_per_s` of completed,
uncontended runs on the same kind of device and precision in the store). A size ladder (models named `ladder-*`)
whose corpus is known to hold fewer train tokens than its largest size trains on is refused, with both numbers:
the corpus is known once it is prepared (the shard cache) or for token files; `data.allow_repeats=true` lets a
smoke corpus (data=ladder_local) through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gqa_sweep.config import ConfigError
from gqa_sweep.model.shape import non_embedding_params, train_flops_per_token
from gqa_sweep.plan import RunPlan, duration
from gqa_sweep.scaling.ladder_plan import measured_runs
from gqa_sweep.spec import RunSpec, thawed

VOCAB_UNKNOWN = 256  # a char tokenizer's vocabulary is the corpus's: count the LM head at a byte vocabulary


@dataclass(frozen=True)
class SizeCost:
    model: str  # the model's name and shape
    n_params: int
    tokens: int
    flops: float
    runs: int  # jobs of this size the sweep would train


def spec_cost(spec: RunSpec) -> tuple[int, int, float]:
    """(N, train tokens, training FLOPs) of one run."""
    vocab = spec.data.get("vocab_size") if spec.data.get("tokenizer") not in (None, "char") else None
    cfg = spec.model_at(int(vocab or VOCAB_UNKNOWN))
    tokens = spec.max_steps * spec.tokens_per_step
    return non_embedding_params(cfg), tokens, tokens * train_flops_per_token(cfg, int(spec.data["block_size"]))


def size_costs(plans: list[RunPlan]) -> list[SizeCost]:
    sizes: dict[str, list] = {}
    for p in plans:
        m = p.spec.model
        key = f"{p.spec.model_name or 'model'} (L{m.n_layers} d{m.d_model} H{m.n_heads} dh{m.d_head})"
        n, tokens, flops = spec_cost(p.spec)
        n_max, t_max, f_max, runs = sizes.get(key, (0, 0, 0.0, 0))
        sizes[key] = [max(n_max, n), max(t_max, tokens), max(f_max, flops), runs + (not p.skip)]
    return [SizeCost(k, *v) for k, v in sizes.items()]


def est_seconds(flops: float, flops_per_token: float, runs) -> float | None:
    """FLOPs / the median model FLOP/s of the stored runs nearest this size in FLOPs per token (small models
    reach a smaller share of the machine's peak, so one median for every size would be wrong)."""
    if runs.empty:
        return None
    distance = (np.log(runs.flops_per_token.astype(float)) - math.log(flops_per_token)).abs().round(6)
    return flops / float(runs[distance == distance.min()].model_flops_per_s.median())


def size_table(plans: list[RunPlan]) -> str:
    import pandas as pd

    spec = plans[0].spec
    precision, cpu = spec.trainer.precision, spec.trainer.accelerator not in ("gpu", "cuda")
    runs = measured_runs(spec.results_dir, precision, cpu)
    rows = []
    for s in size_costs(plans):
        t = est_seconds(s.flops, s.flops / s.tokens, runs)
        rows.append({"model": s.model, "N": f"{s.n_params:,}", "tokens": f"{s.tokens:,}", "FLOPs": f"{s.flops:.3g}",
                     "est. time per run": "—" if t is None else duration(t), "runs to train": s.runs})  # fmt: skip
    if len(runs):
        devices = ", ".join(sorted(set(runs.device.astype(str))))
        note = (f"est. time = FLOPs / the median model FLOP/s of the stored runs nearest in FLOPs per token "
                f"({len(runs)} completed, uncontended {precision} runs: {devices})")
    else:
        note = f"est. time: no completed, uncontended {precision} run on this kind of device in the store yet"
    table = pd.DataFrame(rows).to_markdown(index=False, stralign="right", disable_numparse=True)
    return f"{table}\n{note}"


def corpus_train_tokens(spec: RunSpec) -> int | None:
    """Train tokens of the job's corpus if known without reading text (prepared shards, token files)."""
    from gqa_sweep.data.prepare import prepared_counts

    try:
        counts = prepared_counts(thawed(spec.data))
    except Exception:  # an unreadable or unreachable source is the run's business, reported there
        return None
    return None if counts is None else counts["train"]


def check_ladder_corpus(plans: list[RunPlan], train_tokens: int | None = None) -> None:
    """Refuse a size ladder whose corpus has fewer train tokens than its largest size trains on."""
    ladder = [p for p in plans if p.spec.model_name.startswith("ladder-") and not p.spec.allow_repeats]
    if not ladder:
        return
    big = max(ladder, key=lambda p: spec_cost(p.spec)[1:])
    have = corpus_train_tokens(big.spec) if train_tokens is None else train_tokens
    n, need, _ = spec_cost(big.spec)
    if have is not None and have < need:
        raise ConfigError(f"the corpus has {have:,} train tokens but {big.spec.model_name} (N = {n:,}) trains on "
                          f"{need:,}: the ladder would repeat its data {need / have:.1f} times. Use a corpus of at "
                          f"least {need:,} train tokens (data=text data.path=FILE, data=wikitext), smaller sizes, "
                          "or data.allow_repeats=true for a smoke run")  # fmt: skip


def print_preview(plans: list[RunPlan]) -> None:
    import pandas as pd

    rows = [
        {
            "#": i,
            "run": p.name,
            "run_id": p.run_id,
            "lr": format(p.spec.optim["lr"], "g") if isinstance(p.spec.optim["lr"], float) else p.spec.optim["lr"],
            "in store": (p.status or "—") + (f" (as {p.stored_id})" if p.status and p.stored_id != p.run_id else ""),
            "action": f"same as #{p.same_as}" if p.same_as else "skip" if p.skip
            else ("rerun (force)" if p.status else "train"),
        }
        for i, p in enumerate(plans, 1)
    ]
    n_run = sum(not p.skip for p in plans)
    dirs = ", ".join(dict.fromkeys(p.results_dir for p in plans))
    print(f"== preview: {len(plans)} jobs, {n_run} to train, {len(plans) - n_run} already done; store: {dirs} ==")
    print(pd.DataFrame(rows).to_markdown(index=False, stralign="right", disable_numparse=True))
    for note in dict.fromkeys(p.spec.lr_note for p in plans if p.spec.lr_note):
        print(note)
    print(f"\n== per model size ==\n{size_table(plans)}")
    check_ladder_corpus(plans)
    print("(nothing was run; drop preview=true to run)")

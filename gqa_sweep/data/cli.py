"""`gqa-prepare`: tokenize a corpus into token shards ahead of a sweep, with the same `data.*` overrides.

    gqa-prepare data=text data.path=~/corpora/kernel-docs data.tokenizer=tiktoken:gpt2
    gqa-prepare data=hf data.name=HuggingFaceFW/fineweb-edu data.config=sample-10BT data.streaming=true \\
        data.tokenizer=meta-llama/Meta-Llama-3-8B results_dir=/data/gqa

The config is composed from the package's conf/ (the same data groups and defaults as gqa-sweep), checked
without torch, then prepared (resuming an interrupted prepare). A sweep with the same data config finds the
shards in `data.cache_dir` and reads no text. Torch is never imported.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from gqa_sweep.data.common import DataError


def compose_data(overrides: list[str]) -> dict:
    """The resolved `data` node of gqa-sweep's config under `overrides` (paths made absolute)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="gqa_sweep.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    d = OmegaConf.to_container(cfg.data, resolve=True)
    for key in ("path", "cache_dir"):
        v = d.get(key)
        if v and not str(v).startswith(("/", "~")) and not (key == "path" and d.get("source") == "hf"):
            d[key] = os.path.abspath(str(v))
    d["max_steps"] = int(cfg.trainer.max_steps)
    return d


PREPARED_GROUPS = ("text", "hf", "shakespeare")  # the data groups gqa-prepare tokenizes (tokens, mqar: as they are)


def data_keys_help() -> str:
    """The data groups and their keys with defaults and comments, read from the package's conf/data: the help says
    what the config files say."""
    from importlib.resources import files

    conf = files("gqa_sweep.conf").joinpath("data")
    groups = sorted(p.name.removesuffix(".yaml") for p in conf.iterdir() if p.name.endswith(".yaml"))
    value: dict[str, str] = {}
    comment: dict[str, str] = {}
    for group in [g for g in PREPARED_GROUPS if g in groups]:
        for line in conf.joinpath(f"{group}.yaml").read_text().splitlines():
            if line[:1].isalpha() and ":" in line:
                key, rest = line.split(":", 1)
                v, _, c = rest.partition("#")
                value.setdefault(key, v.strip())
                if c.strip():
                    comment.setdefault(key, c.strip())
    lines = [(f"  data.{k}={v}".ljust(34) + f"  {comment.get(k, '')}").rstrip() for k, v in value.items()]
    return "\n".join([
        f"data groups (data=NAME): {', '.join(groups)}; gqa-prepare tokenizes {', '.join(PREPARED_GROUPS)}, a sweep "
        "reads the others as they are",
        "data keys (data.KEY=VALUE; the default shown is data=text's, else data=hf's):",
        *lines,
        "",
        "Where the shards go: data.cache_dir/<key>/ (default results_dir/cache, i.e. results/cache/<key>/), the key",
        "a hash of the corpus (paths, sizes, mtimes or the HF fingerprint), the tokenizer and the split. It holds",
        "train-00000.bin ..., val-00000.bin ..., tokenizer.json and meta.json (written last); a sweep with the",
        "same data config and results_dir (or data.cache_dir) reads them without reading any text.",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gqa-prepare", description=__doc__.split("\n\n")[0],
                                 epilog=data_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="gqa-sweep overrides, e.g. data=text data.path=FILE")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from gqa_sweep.data.prepare import prepare, split_counts
    from gqa_sweep.data.progress import Progress
    from gqa_sweep.data.spec import check_data

    try:
        d = compose_data(args.overrides)
        if d.get("source") in ("mqar", "tokens"):
            raise DataError(f"data={d['source']} needs no prepare: a sweep reads it as it is")
        check_data(d)
        hit: list[bool] = []
        out = prepare(d, Progress(not args.quiet), on_hit=hit.append)
    except DataError as e:
        print(f"gqa-prepare: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if type(e).__module__.startswith(("hydra", "omegaconf")):
            print(f"gqa-prepare: {str(e).strip().splitlines()[0]}", file=sys.stderr)
            return 2
        raise
    meta = json.loads((Path(out) / "meta.json").read_text())
    n = split_counts(out)
    print(json.dumps({"dir": str(out), "cache_hit": bool(hit and hit[0]), "train_tokens": n["train"],
                      "val_tokens": n["val"], "documents": meta["documents"], "vocab_size": meta["vocab_size"],
                      "shards": sum(len(v) for v in meta["shards"].values())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

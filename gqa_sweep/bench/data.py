"""Data-path measurements (docs/benchmarks.md, "Data"): prepare throughput and memory, and training reads.

    python -m gqa_sweep.bench.data corpus --src /work/corpus --work /tmp/gqa-data-bench --big-gb 2
    python -m gqa_sweep.bench.data throughput --work ...   prepare vs the bare tokenizer's encode_batch, side by side
    python -m gqa_sweep.bench.data rss --work ...          peak RSS of `gqa-prepare` (process tree), 200 MB vs 2 GB
    python -m gqa_sweep.bench.data reads --work ...        >= 1B-token shard set: first batch, RSS over 1,000 steps
    python -m gqa_sweep.bench.data all ...                 everything, one table per part, under --out (results/)

The corpus is real text (build-corpus.sh: the Linux kernel documentation, one document per file), repeated
into jsonl files of ~100 MB (one row = one document), as FineWeb ships. Tokenizers: our byte-level BPE (trained
by the prepare on data.bpe_sample_bytes), a 32k BPE saved as tokenizer.json (read by path, as a Llama-3 or
Qwen tokenizer.json would be), and the same 32k vocabulary as a tiktoken rank file (no OpenAI encoding can be
downloaded here).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[2]


def build_corpus(src: Path, work: Path, big_gb: float, file_mb: int = 100) -> Path:
    """jsonl files of the kernel docs repeated to `big_gb` (row = document); idempotent."""
    out = work / "jsonl"
    if (out / "DONE").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    docs = [p.read_text(encoding="utf-8", errors="replace") for p in sorted((src / "kernel-docs").glob("*.txt"))]
    target, written, k, rep = big_gb * 1e9, 0, 0, 0
    f = open(out / f"part-{k:04d}.jsonl", "w")  # noqa: SIM115
    while written < target:
        for i, d in enumerate(docs):
            line = json.dumps({"text": d, "id": f"{rep}-{i}"}) + "\n"
            f.write(line)
            written += len(line)
            if f.tell() >= file_mb * 1e6:
                f.close()
                k += 1
                f = open(out / f"part-{k:04d}.jsonl", "w")  # noqa: SIM115
            if written >= target:
                break
        rep += 1
    f.close()
    (out / "DONE").write_text(str(written))
    return out


def subset(work: Path, n_files: int, name: str) -> Path:
    """A directory of symlinks to the first n jsonl files (a smaller corpus of the same text)."""
    d = work / name
    d.mkdir(exist_ok=True)
    for p in sorted((work / "jsonl").glob("part-*.jsonl"))[:n_files]:
        if not (d / p.name).exists():
            (d / p.name).symlink_to(p)
    return d


def texts_of(path: Path, limit: int) -> list[str]:
    out, n = [], 0
    for p in sorted(path.glob("*.jsonl")):
        with open(p, encoding="utf-8") as f:
            for line in f:
                t = json.loads(line)["text"]
                out.append(t)
                n += len(t.encode())
                if n >= limit:
                    return out
    return out


def make_tokenizers(work: Path, sample: Path) -> dict[str, str]:
    """A 32k byte-level BPE (tokenizer.json) and its ranks as a tiktoken file, trained on 8 MiB of the corpus."""
    from gqa_sweep.data.tokenizer_export import bytes_to_unicode
    from gqa_sweep.data.tokenizers import BpeTokenizer

    tj, tt = work / "bpe32k" / "tokenizer.json", work / "bpe32k" / "bpe32k.tiktoken"
    if not tj.exists():
        tj.parent.mkdir(parents=True, exist_ok=True)
        tok = BpeTokenizer.train(texts_of(sample, 8 << 20), 32768, eot=True)
        tok.save(tj)
    if not tt.exists():
        inv = {c: b for b, c in bytes_to_unicode().items()}
        vocab = json.loads(tj.read_text())["model"]["vocab"]
        ranks = sorted(((bytes(inv[c] for c in s), r) for s, r in vocab.items()), key=lambda x: x[1])
        tt.write_text("".join(f"{base64.b64encode(b).decode()} {i}\n" for i, (b, _) in enumerate(ranks)))
    return {"bpe-1024 (ours)": "bpe", "tokenizer.json (32k BPE)": str(tj), "tiktoken (32k ranks)": f"tiktoken:{tt}"}


def prepare_cmd(path: Path, tokenizer: str, cache: Path, extra: list[str] = ()) -> list[str]:
    return [sys.executable, "-m", "gqa_sweep.data.cli", "--quiet", "data=text", f"data.path={path}",
            f"data.tokenizer={tokenizer}", f"data.cache_dir={cache}", *extra]


def tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """Wall seconds, peak RSS of the process tree (sampled every 50 ms), stdout."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    th.join()
    if proc.returncode:
        raise RuntimeError(err[-2000:])
    return time.perf_counter() - t0, peak[0], out


def bare_encode(tokenizer: str, texts: list[str]) -> float:
    """MB/s of the tokenizer's own encode_batch over the same texts, batched as the prepare batches them."""
    from gqa_sweep.data.prepare import batch_bytes
    from gqa_sweep.data.tokenizers import load_named

    tok = load_named(tokenizer)
    size, batches, cur, n = batch_bytes(), [], [], 0
    for t in texts:
        cur.append(t)
        n += len(t)
        if n >= size:
            batches.append(cur)
            cur, n = [], 0
    batches.append(cur)
    t0 = time.perf_counter()
    for b in batches:
        tok.encode_batch(b)
    return sum(len(t.encode()) for t in texts) / 1e6 / (time.perf_counter() - t0)


BARE = """
import sys
from pathlib import Path
from gqa_sweep.bench.data import bare_encode, texts_of
print(bare_encode(sys.argv[1], texts_of(Path(sys.argv[2]), 1 << 62)))
"""


def bare_in_subprocess(tokenizer: str, sample: Path) -> float:
    """bare_encode in a fresh process, as the prepare runs in one (same imports, same thread pools)."""
    r = subprocess.run([sys.executable, "-c", BARE, tokenizer, str(sample)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def throughput(work: Path, sample_mb: int, repeats: int = 5) -> list[dict]:
    """End-to-end prepare MB/s (reading, json, encoding, writing; BPE training excluded and shown) vs bare."""
    sample = work / "sample"
    sample.mkdir(exist_ok=True)
    src = min((work / "jsonl").glob("part-*.jsonl"))
    target = sample / "sample.jsonl"
    if not target.exists():
        with open(src, encoding="utf-8") as f, open(target, "w", encoding="utf-8") as g:
            n = 0
            for line in f:
                g.write(line)
                n += len(line)
                if n >= sample_mb * 1e6:
                    break
    mb = sum(len(t.encode()) for t in texts_of(sample, 1 << 62)) / 1e6
    rows = []
    shutil.rmtree(work / "cache-throughput", ignore_errors=True)  # every prepare timed here must be a miss
    for label, tok in make_tokenizers(work, sample).items():
        cache = work / "cache-throughput"
        extra = ["data.bpe_sample_bytes=8000000"] if tok == "bpe" else []
        if tok == "bpe":  # the bare side needs the trained tokenizer: prepare once, then time both
            _, _, out = run_measured(prepare_cmd(sample, tok, cache / "warm", extra))
            bare_tok = str(Path(json.loads(out)["dir"]) / "tokenizer.json")
        else:
            bare_tok = tok
        bares, e2es, walls, tok_s, peaks = [], [], [], [], []
        for rep in range(repeats):  # interleaved: bare, prepare, bare, prepare, ... (the CPU is shared)
            bares.append(bare_in_subprocess(bare_tok, sample))
            wall, peak, out = run_measured(prepare_cmd(sample, tok, cache / f"{label.split()[0]}-{rep}", extra))
            meta = json.loads((Path(json.loads(out)["dir"]) / "meta.json").read_text())
            e2es.append(mb / meta["encode_seconds"])
            walls.append(wall)
            tok_s.append(meta["seconds"] - meta["encode_seconds"])
            peaks.append(peak)
        bare, e2e = median(bares), median(e2es)
        rows.append({"tokenizer": label, "text_MB": round(mb, 1), "bare_encode_batch_MBps": round(bare, 2),
                     "prepare_MBps": round(e2e, 2), "ratio": round(e2e / bare, 2),
                     "ratio_range": f"{min(e / b for e, b in zip(e2es, bares)):.2f}-"
                                    f"{max(e / b for e, b in zip(e2es, bares)):.2f}",
                     "prepare_wall_s": round(median(walls), 1), "tokenizer_s": round(median(tok_s), 1),
                     "peak_rss_MB": round(max(peaks) / 2**20)})
        print(rows[-1], flush=True)
    return rows


def rss(work: Path, tokenizer: str, small_files: int) -> list[dict]:
    rows = []
    for name, n in (("small", small_files), ("big", 10**6)):
        d = subset(work, n, f"corpus-{name}")
        mb = sum(p.stat().st_size for p in d.iterdir()) / 1e6
        wall, peak, out = run_measured(prepare_cmd(d, tokenizer, work / "cache-rss"))
        r = json.loads(out)
        rows.append({"corpus_MB": round(mb), "tokenizer": tokenizer, "tokens": r["train_tokens"] + r["val_tokens"],
                     "shards": r["shards"], "wall_s": round(wall), "MBps": round(mb / wall, 2),
                     "peak_rss_MiB": round(peak / 2**20)})
        print(rows[-1], flush=True)
    return rows


READS = """
import json, sys, time, psutil, torch
t0 = time.perf_counter()
from gqa_sweep.data import CorpusDataModule
dm = CorpusDataModule(source="tokens", path=sys.argv[1], block_size=1024, batch_size=16, max_steps=1000)
t_setup = time.perf_counter()
dm.setup()
it = iter(dm.train_dataloader())
x, y = next(it)
first = time.perf_counter() - t_setup
def mem():
    f = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith(("VmRSS", "RssAnon", "RssFile")))
    return [int(f[k].split()[0]) * 1024 for k in ("VmRSS", "RssAnon", "RssFile")]
rss0, anon0, file0 = mem()
times = []
for _ in range(999):
    t = time.perf_counter(); next(it); times.append(time.perf_counter() - t)
rss1, anon1, file1 = mem()
from gqa_sweep.model.shape import build_shape
from gqa_sweep.model.transformer import DecoderLM
torch.manual_seed(0)
m = DecoderLM(build_shape(vocab_size=32768, block_size=256, n_layers=2, d_model=128, n_heads=4, n_kv_heads=2))
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
xs, ys = x[:4, :256], y[:4, :256]
steps = []
for i in range(6):
    t = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(m(xs).flatten(0, 1), ys.flatten())
    loss.backward(); opt.step(); opt.zero_grad()
    steps.append(time.perf_counter() - t)
step = sorted(steps[1:])[len(steps[1:]) // 2]
times.sort()
print(json.dumps({"tokens": dm.train_tokens + dm.val_tokens, "import_s": round(t_setup - t0, 2),
                  "first_batch_s": round(first, 3), "batch_ms_median": round(times[len(times) // 2] * 1e3, 3),
                  "batch_ms_p99": round(times[int(len(times) * 0.99)] * 1e3, 3),
                  "rss_growth_1000_steps_MB": round((rss1 - rss0) / 1e6, 1),
                  "anon_growth_MB": round((anon1 - anon0) / 1e6, 1),
                  "file_mapped_growth_MB": round((file1 - file0) / 1e6, 1),
                  "rss_MB": round(rss1 / 1e6),
                  "train_step_ms": round(step * 1e3, 1),
                  "batch_share_of_step": round(times[len(times) // 2] / step, 5)}))
"""


def reads(work: Path, n_shards: int = 10, shard_tokens: int = 100_000_000) -> list[dict]:
    """A synthetic set of n_shards x shard_tokens random uint16 ids, then one fresh process reading it."""
    import numpy as np

    from gqa_sweep.data.shards import write_shard

    d = work / f"shards-{n_shards}x{shard_tokens}"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(n_shards):
        for split, n in (("train", shard_tokens), ("val", 0)):
            f = d / f"{split}-{k:05d}.bin"
            if not f.exists() and n:
                write_shard(f, rng.integers(0, 32768, n, dtype=np.uint16), 32768, None)
    if not (d / "val-00000.bin").exists():
        write_shard(d / "val-00000.bin", rng.integers(0, 32768, 1_000_000, dtype=np.uint16), 32768, None)
    _, peak, out = run_measured([sys.executable, "-c", READS, str(d)])
    row = json.loads(out.strip().splitlines()[-1])
    row["peak_rss_MB"] = round(peak / 1e6)
    print(row, flush=True)
    return [row]


def write(out: Path, name: str, rows: list[dict], note: str) -> None:
    from tabulate import tabulate

    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    head = (f"# {name}\n\n{date.today()} - {platform.processor() or 'AMD EPYC'}, {os.cpu_count()} cores, load average "
            f"{load[0]:.1f} (shared machine)\n\n{note}\n\n")
    table = tabulate(rows, headers="keys", tablefmt="github")
    (out / f"data-{name}.md").write_text(head + table + "\n")
    print(head + table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gqa_sweep.bench.data", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["corpus", "throughput", "rss", "reads", "all"])
    ap.add_argument("--src", default="/work/corpus", help="build-corpus.sh output (kernel-docs/)")
    ap.add_argument("--work", default="/tmp/gqa-data-bench")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    ap.add_argument("--big-gb", type=float, default=2.0)
    ap.add_argument("--small-files", type=int, default=2, help="jsonl files (100 MB each) of the small corpus")
    ap.add_argument("--sample-mb", type=int, default=16)
    ap.add_argument("--read-shards", type=int, default=10)
    ap.add_argument("--read-shard-tokens", type=int, default=100_000_000)
    ap.add_argument("--rss-tokenizer", default=None, help="default: the tiktoken rank file")
    args = ap.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    build_corpus(Path(args.src), work, args.big_gb)
    if args.what in ("throughput", "all"):
        write(out, "throughput", throughput(work, args.sample_mb),
              "prepare_MBps = text bytes / the prepare's encode loop (reading jsonl, encoding, writing shards); "
              "bare = the tokenizer's encode_batch on the same texts in memory, same batches, in a fresh process "
              "like the prepare; bare and prepare interleaved 5 times, medians (ratio_range: per pair); "
              "tokenizer_s = BPE training (ours) or loading.")
    if args.what in ("rss", "all"):
        tok = args.rss_tokenizer or f"tiktoken:{work / 'bpe32k' / 'bpe32k.tiktoken'}"
        write(out, "rss", rss(work, tok, args.small_files),
              "gqa-prepare as a user runs it; peak RSS of its process tree sampled every 50 ms.")
    if args.what in ("reads", "all"):
        write(out, "reads", reads(work, args.read_shards, args.read_shard_tokens),
              "A fresh process opens a 1.0B-token shard set (10 x 1e8 random uint16 ids) with data=tokens: "
              "first_batch_s = setup() + the first batch (16 x 1024); batch times over 1,000 steps; RSS growth "
              "over those steps; train_step_ms = one AdamW step of a 2-layer d=128 model (vocab 32,768) on "
              "4 x 256 tokens, for the share (batch_ms_median / train_step_ms).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

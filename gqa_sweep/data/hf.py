"""Hugging Face `datasets` as a document source (Arrow-mmapped or streaming), with a bounded-time probe so that
offline fails fast."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from urllib.parse import urlparse

from gqa_sweep.data.common import LOCAL_HINT, DataError
from gqa_sweep.data.sources import Piece, ReplaceCounter, row_pieces

HUB_PROBE_TIMEOUT_S = 1.0


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


def hf_cached(name: str) -> bool:
    """Whether anything of dataset `name` is in the local HF caches (a directory check, no network, no import)."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub")).expanduser()
    ds = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets")).expanduser()
    owner_name = name.replace("/", "--")
    return (hub / f"datasets--{owner_name}").exists() or any(ds.glob(name.replace("/", "___") + "*")) or \
        any(ds.glob(name.split("/")[-1] + "*"))


def open_hf(name: str, config: str | None, split: str, streaming: bool = False, num_proc: int | None = None):
    """One split of a Hugging Face dataset (Arrow-mmapped, or an IterableDataset); offline uses the HF cache."""
    import datasets

    label = f"hf:{name}" + (f"/{config}" if config else "")
    offline = not _hub_reachable()
    try:
        with _hub_offline() if offline else nullcontext():
            return datasets.load_dataset(name, config, split=split, streaming=streaming, num_proc=num_proc)
    except ConnectionError as e:
        raise DataError(f"{label} could not be reached (no connection to the Hugging Face Hub and not in the "
                        f"local HF cache); {LOCAL_HINT}") from e
    except (FileNotFoundError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = " or " + LOCAL_HINT if offline else ""
        raise DataError(f"{label} split={split} could not be loaded ({first_line}); check data.name, "
                        f"data.config and data.split{hint}") from e


class HFSource:
    """Rows of a Hugging Face dataset split as documents (one row = one document), read in batches."""

    structured = True
    path = None

    def __init__(self, name: str, config: str | None, split: str, text_field: str, streaming: bool = False,
                 num_proc: int | None = None) -> None:
        self.name, self.config, self.split, self.text_field = name, config, split, text_field
        self.streaming = bool(streaming)
        self.ds = open_hf(name, config, split, self.streaming, num_proc)
        label = f"hf:{name}" + (f"/{config}" if config else "")
        columns = self.ds.column_names or []
        if columns and text_field not in columns:
            raise DataError(f"data.text_field={text_field} is not a column of {label}; columns: {', '.join(columns)}")
        self.replaced = ReplaceCounter()
        self.total_bytes = 0 if self.streaming else int(self.ds.data.nbytes)

    def identity(self) -> dict:
        """The dataset's fingerprint (its Arrow files' identity); streaming: name, config, split and revision."""
        ident = {"kind": "hf", "name": self.name, "config": self.config, "split": self.split,
                 "text_field": self.text_field}
        if self.streaming:
            info = getattr(self.ds, "info", None)
            ident["revision"] = str(getattr(info, "version", "") or "")
        else:
            ident["fingerprint"] = self.ds._fingerprint
        return ident

    def pieces(self, cursor: tuple | None = None):
        _, start, doc, _ = cursor or (0, 0, 0, False)
        ds = self.ds.select_columns([self.text_field])
        if start:
            ds = ds.skip(start)
        row = start
        per_row = self.total_bytes / max(1, getattr(self.ds, "num_rows", 0) or 1)
        for batch in ds.iter(batch_size=1000):
            for text in batch[self.text_field]:
                row += 1
                if not text:
                    continue
                yield from row_pieces(text, doc, (0, row, doc + 1, False), int(per_row) or len(text))
                doc += 1


def load_hf(name: str, config: str | None, split: str, text_field: str) -> str:
    """Text of one split of a Hugging Face dataset, rows joined with newlines (small datasets, tests)."""
    return "\n".join(p.text for p in HFSource(name, config, split, text_field).pieces())


__all__ = ["HFSource", "Piece", "hf_cached", "load_hf", "open_hf"]

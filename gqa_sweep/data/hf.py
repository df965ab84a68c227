"""Hugging Face `datasets` as a text source, with a bounded-time probe so that offline fails fast."""

from __future__ import annotations

import os
import socket
import threading
from contextlib import contextmanager, nullcontext
from typing import Iterator
from urllib.parse import urlparse

from gqa_sweep.data.common import LOCAL_HINT, DataError

HUB_PROBE_TIMEOUT_S = 3.0


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
                        f"local HF cache); {LOCAL_HINT}") from e
    except (FileNotFoundError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = " or " + LOCAL_HINT if offline else ""
        raise DataError(f"{label} split={split} could not be loaded ({first_line}); check data.name, "
                        f"data.config and data.split{hint}") from e
    if text_field not in ds.column_names:
        raise DataError(f"data.text_field={text_field} is not a column of {label}; "
                        f"columns: {', '.join(ds.column_names)}")
    return "\n".join(t for t in ds[text_field] if t is not None)

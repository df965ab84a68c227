"""Data: sources (embedded, local text, Hugging Face, token files) -> tokenizers -> token shards -> data modules.

Importing the package is light (no torch, no lightning): `gqa_sweep.data.spec.check_data` runs before torch loads.
The data modules are imported on first use.
"""

from gqa_sweep.data.common import DataError

_LAZY = {
    "CorpusDataModule": "gqa_sweep.data.module",
    "MQARDataModule": "gqa_sweep.data.mqar_module",
    "load_hf": "gqa_sweep.data.hf",
    "load_shakespeare": "gqa_sweep.data.sources",
    "load_text": "gqa_sweep.data.text",
    "check_data": "gqa_sweep.data.spec",
    "prepare": "gqa_sweep.data.prepare",
}

__all__ = ["CorpusDataModule", "DataError", "MQARDataModule", "check_data", "load_hf", "load_shakespeare",
           "load_text", "prepare"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gqa_sweep.data' has no attribute {name!r}")

"""Data: corpora (embedded, local text, Hugging Face) -> tokenizers -> a LightningDataModule.

The exports load lazily: the torch-free parts (data.mqar's spec checks, data.common) are imported by the
sweep's plan step, which must not pay for torch and Lightning.
"""

from importlib import import_module

_EXPORTS = {
    "CorpusDataModule": "gqa_sweep.data.module",
    "DataError": "gqa_sweep.data.common",
    "MQARDataModule": "gqa_sweep.data.mqar_module",
    "load_hf": "gqa_sweep.data.hf",
    "load_shakespeare": "gqa_sweep.data.text",
    "load_text": "gqa_sweep.data.text",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gqa_sweep.data' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)

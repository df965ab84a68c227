"""Data: corpora (embedded, local text, Hugging Face) -> tokenizers -> a LightningDataModule."""

from gqa_sweep.data.common import DataError
from gqa_sweep.data.hf import load_hf
from gqa_sweep.data.module import CorpusDataModule
from gqa_sweep.data.mqar_module import MQARDataModule
from gqa_sweep.data.text import load_shakespeare, load_text

__all__ = ["CorpusDataModule", "DataError", "MQARDataModule", "load_hf", "load_shakespeare", "load_text"]

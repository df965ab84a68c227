"""Hydra config groups (importable so that Hydra finds them inside an installed package)."""

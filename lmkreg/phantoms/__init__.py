"""Synthetic paired MR / TRUS prostate phantoms with exact ground truth.

``generate_case(seed, preset)`` gives one case in memory; ``generate_dataset(...)`` (and the
``lmkreg_generate_phantoms`` command) writes a whole dataset in the lmkreg layout.
See documentation/phantoms.md.
"""
from lmkreg.phantoms.anatomy import Anatomy, Tissue, sample_anatomy
from lmkreg.phantoms.generator import PhantomCase, case_seed, generate_case, generate_dataset, write_case
from lmkreg.phantoms.presets import PRESETS, PhantomPreset, get_preset

__all__ = ["Anatomy", "Tissue", "sample_anatomy", "PhantomCase", "case_seed", "generate_case", "generate_dataset",
           "write_case", "PRESETS", "PhantomPreset", "get_preset"]

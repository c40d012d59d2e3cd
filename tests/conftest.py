"""Shared fixtures: isolated LMKREG_* folders and oblique, anisotropic geometries."""
from __future__ import annotations

import numpy as np
import pytest

from lmkreg.geometry import ImageGeometry, rotation_direction


@pytest.fixture(autouse=True)
def lmkreg_folders(tmp_path_factory, monkeypatch):
    """Every test gets its own raw/preprocessed/results folders (never the user's)."""
    tmp_path = tmp_path_factory.mktemp("lmkreg_data")
    for var, sub in (("LMKREG_raw", "raw"), ("LMKREG_preprocessed", "preprocessed"), ("LMKREG_results", "results")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path


@pytest.fixture
def oblique_geometry() -> ImageGeometry:
    """An oblique (rotated about all three axes), anisotropic grid with a non-trivial origin."""
    return ImageGeometry.create(shape_zyx=(17, 23, 29), spacing_xyz=(0.7, 1.1, 2.5),
                                origin_xyz=(-31.2, 12.5, 40.8), direction=rotation_direction((23.0, -14.0, 37.0)))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)

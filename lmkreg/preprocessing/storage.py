"""Preprocessed arrays on disk: Blosc2 compressed ``.b2nd`` files, written atomically."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import blosc2
import numpy as np

from lmkreg.io.atomic import atomic_path

PathLike = Union[str, Path]
ARRAY_SUFFIX = ".b2nd"


def save_array(array: np.ndarray, path: PathLike) -> Path:
    """Compress (zstd, fast level) and write atomically; reading back gives the same array."""
    with atomic_path(path) as tmp:
        tmp.unlink()  # blosc2 refuses to create over an existing file
        blosc2.asarray(np.ascontiguousarray(array), urlpath=str(tmp), mode="w",
                       cparams=blosc2.CParams(codec=blosc2.Codec.ZSTD, clevel=3))
    return Path(path)


def load_array(path: PathLike) -> np.ndarray:
    """Read a whole .b2nd array into memory."""
    return blosc2.open(str(path), mode="r")[...]

"""Modality kinds: every modality name (MR, T2, US, TRUS, ...) is handled as MR or as ultrasound."""
from __future__ import annotations

MODALITY_KINDS = ("MR", "US")


def modality_kind(modality: str) -> str:
    """'US' for ultrasound names (US, TRUS, ultrasound...), otherwise 'MR'."""
    m = modality.upper()
    return "US" if m.startswith(("US", "TRUS")) or "ULTRASOUND" in m else "MR"

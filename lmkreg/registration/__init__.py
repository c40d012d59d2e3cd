"""Rigid MR->US registration from landmark pairs."""
from lmkreg.registration.landmark_fit import fit_rigid, register_landmarks

__all__ = ["fit_rigid", "register_landmarks"]

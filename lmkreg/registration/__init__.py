"""Rigid MR->US registration from landmark pairs (the least-squares fit itself is lmkreg.geometry.rigid.fit_rigid)."""

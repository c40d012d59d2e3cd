"""Accuracy of landmarks and registrations, measured as in the paper (MRE, SRE, Dice)."""

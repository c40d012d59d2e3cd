"""Preprocessing: planned resampling, normalisation and storage of training cases."""

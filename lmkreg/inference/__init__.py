"""Prediction of landmarks with trained models."""

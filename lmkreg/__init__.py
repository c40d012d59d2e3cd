"""lmkreg: self-configuring landmark detection and rigid MR->TRUS registration for prostate imaging."""
__version__ = "0.1.0"

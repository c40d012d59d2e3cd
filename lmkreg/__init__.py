"""lmkreg: self-configuring landmark detection and rigid MR->TRUS registration for prostate imaging."""
# Before anything imports torch or numpy: OpenMP reads its wait policy once, when it is loaded
# (see lmkreg/threads.py; LMKREG_THREAD_POLICY=off leaves the library defaults).
from lmkreg.threads import set_openmp_environment as _set_openmp_environment

_set_openmp_environment()
__version__ = "0.1.0"

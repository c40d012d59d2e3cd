"""The commands: orchestration of the layers below and the thin command-line entry points.

Every console command of setup.py has its ``main`` here (nnU-Net's ``run/``); the library
functions a command calls stay in their package.  Nothing in lmkreg imports this package
except its own modules.
"""

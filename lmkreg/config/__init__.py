"""The vocabulary that planning, training and inference share: the ``plans.json`` schema, the
network topology, the augmentation names and their parameters, the splits file, the cost model
of a network and the modality kinds.

Plain data and checks only: nothing here imports lmkreg.planning, lmkreg.training,
lmkreg.inference or torch, so each of them can import it without importing the others
(documentation/architecture.md).
"""

"""How far to trust a result, in numbers a user can check.

* ``calibration``: split-conformal error radii per landmark (mm, at a stated coverage) from the
  cross-validation predictions made when a fold finishes training;
* ``plausibility``: a case's landmarks and image against the training distribution stored with
  the model (``training_statistics.json``);
* ``pair``: a registration's fit residual against what the training pairs make expected, and
  the landmark radii propagated to the transform (rotation, target error at the gland centre).
* ``error_estimate``: which estimate a configuration's predictions carry (calibrated, borrowed
  by fold 'all' from the CV folds, or uncalibrated), in words written into the landmark file;
* ``pair_checks``: model-free checks of any two landmark files (distances, triangle shape,
  residual) against a documented per-landmark tolerance;
* ``verdict``: a pair's verdict from the consequences of its landmarks' flags (widened radii,
  transform uncertainty at the gland) and, after an accepted surface refinement, from the surfaces.
"""

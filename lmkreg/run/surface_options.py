"""``lmkreg_register --refine surface``: its options, their checks, and the masks of each pair.

The refinement itself is lmkreg.registration.surface (the rule) on lmkreg.registration.icp (the maths).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import SimpleITK as sitk

from lmkreg.errors import InputError
from lmkreg.io.atomic import split_suffix
from lmkreg.io.images import is_image_file
from lmkreg.io.inputs import CASE_SUFFIX
from lmkreg.registration.icp import (DEFAULT_LANDMARK_WEIGHT, DEFAULT_TRIM_FRACTION, MAX_ROTATION_DEG, MAX_SHIFT_MM,
                                     MaskLike, SurfaceSettings, gland_surface)
from lmkreg.registration.predicted_masks import find_predicted_mask
from lmkreg.registration.surface import refine_on_masks, refine_on_surfaces
from lmkreg.registration.transform_files import not_refined_fields, refinement_fields
from lmkreg.trust.flags import add_flags
from lmkreg.trust.verdict import surface_distance_limit, surface_verdict


REFINE_CHOICES = ("none", "surface")


def add_surface_options(p: argparse.ArgumentParser) -> None:
    """The options of ``lmkreg_register --refine surface``."""
    p.add_argument("--refine", choices=REFINE_CHOICES, default="none",
                   help="surface: refine the landmark transform by rigid ICP between the MR and US prostate "
                        "surfaces (the masks of --mr-mask and --us-mask, or without them the masks predicted with "
                        "the landmarks by a segmentation model); kept only if it lowers the surface distance and "
                        "stays within --max-rotation-deg and --max-shift-mm of the landmark transform")
    p.add_argument("--us-mask", type=Path,
                   help="US prostate mask for --refine surface: a file for one pair, a folder of masks matched "
                        "by case name with --mr-dir/--us-dir (default, with no --mr-mask either: the masks a "
                        "segmentation model predicted, named in each landmark JSON)")
    p.add_argument("--trim-fraction", type=float, default=DEFAULT_TRIM_FRACTION,
                   help=f"--refine surface: share of surface point pairs kept per ICP iteration, the closest "
                        f"ones, so a partial TRUS view does not pull the result (default {DEFAULT_TRIM_FRACTION})")
    p.add_argument("--max-rotation-deg", type=float, default=MAX_ROTATION_DEG,
                   help=f"--refine surface: refuse a refinement rotating more than this many degrees from the "
                        f"landmark transform (default {MAX_ROTATION_DEG:g})")
    p.add_argument("--max-shift-mm", type=float, default=MAX_SHIFT_MM,
                   help=f"--refine surface: refuse a refinement moving the gland centre more than this many mm "
                        f"from the landmark transform (default {MAX_SHIFT_MM:g})")
    p.add_argument("--landmark-weight", type=float, default=DEFAULT_LANDMARK_WEIGHT, metavar="W",
                   help="--refine surface: also fit the landmarks as point pairs; the ICP minimises the mean "
                        f"squared surface distance plus W times the mean squared landmark distance (default "
                        f"{DEFAULT_LANDMARK_WEIGHT:g}, chosen across protocol families; 0: surfaces only)")


@dataclass
class SurfaceRequest:
    """What ``--refine surface`` asked for: the mask files or folders (None: each case's predicted
    masks, named by its landmark JSON's ``prostate`` entry) and the settings."""

    mr_mask: Optional[Path]
    us_mask: Optional[Path]
    settings: SurfaceSettings
    folders: bool
    images: dict = field(default_factory=dict)  # case -> {modality: sitk.Image}: masks in memory (one shot)

    @property
    def predicted(self) -> bool:
        """True when the masks come from the predictions, not from --mr-mask/--us-mask."""
        return self.mr_mask is None or self.us_mask is None

    def masks_for(self, case: str, mr_landmarks_file: Optional[Path] = None,
                  us_landmarks_file: Optional[Path] = None) -> tuple[MaskLike, MaskLike]:
        """The MR and US masks of a case: the user's files (folders: matched by case name like
        landmark files), else the predicted masks (in memory, or named by the landmark JSONs).
        Raises MissingMask saying why a predicted one is not there."""
        if not self.predicted:
            if not self.folders:
                return self.mr_mask, self.us_mask
            return _mask_in_folder(self.mr_mask, case), _mask_in_folder(self.us_mask, case)
        found, missing = [], []
        for modality, landmarks_file in (("MR", mr_landmarks_file), ("US", us_landmarks_file)):
            image = self.images.get(case, {}).get(modality)
            if image is not None:
                found.append(image)
                continue
            why = f"no {modality} landmark file" if landmarks_file is None else None
            mask = None
            if landmarks_file is not None:
                mask, why = find_predicted_mask(landmarks_file)
            if mask is None:
                missing.append(f"{modality}: {why}")
            found.append(mask)
        if missing:
            raise MissingMask("; ".join(missing))
        return found[0], found[1]

    def refine_pair(self, reg, doc: dict, mr_landmarks, us_landmarks, case: str,
                    mr_file: Optional[Path] = None, us_file: Optional[Path] = None):
        """Refine one registered pair in place of its landmark transform: returns the registration
        with the transform to use and the JSON document with both transforms and the outcome.
        Predicted masks that are missing or unusable keep the landmark transform, with the reason."""
        names = list(reg.names)
        landmarks = (mr_landmarks.to_array(names), us_landmarks.to_array(names))
        try:
            mr_mask, us_mask = self.masks_for(case, mr_file, us_file)
            if self.predicted:  # a predicted mask may be empty: the case keeps its landmark transform
                mr_mask, us_mask = (m if isinstance(m, sitk.Image) else Path(m) for m in (mr_mask, us_mask))
                result = refine_on_surfaces(reg.transform, gland_surface(mr_mask, _source(mr_mask, "MR")),
                                            gland_surface(us_mask, _source(us_mask, "US")), self.settings,
                                            landmarks, names)
            else:
                result = refine_on_masks(reg.transform, mr_mask, us_mask, self.settings, landmarks, names)
        except MissingMask as exc:
            return reg, self._not_refined(reg, doc, case, f"no predicted prostate mask ({exc})")
        except InputError as exc:
            if not self.predicted:
                raise
            return reg, self._not_refined(reg, doc, case, f"predicted prostate mask unusable ({exc})")
        trust = reg.trust if isinstance(reg.trust, dict) else {}
        trust["surface"] = {"accepted": result.accepted, "reason": result.reason,
                            "surface_distance_mm": result.distance_surface_mm if result.accepted
                            else result.rescue.distance_mm if result.rescued else result.distance_landmarks_mm,
                            "notes": ["rms_residual_mm and uncertainty describe the landmark transform, not the "
                                      f"{'refined' if result.accepted else 'rescued'} one in use"]
                            if result.accepted or result.rescued else []}
        if result.rescued:
            trust["surface"]["rescue"] = result.rescue.reason
        # issue 26: after an accepted refinement the verdict comes from the surfaces' fit
        trust = surface_verdict(trust, result.accepted, result.distance_surface_mm if result.accepted else
                                None if result.beyond_bound or result.rescued else result.distance_landmarks_mm,
                                (result.rotation_change_deg, result.shift_mm), result.landmark_residuals_mm,
                                surface_distance_limit(mr_landmarks, us_landmarks))
        if result.flags:
            add_flags(trust, result.flags)
            trust["reliable"] = False
        reg.trust = trust
        doc = {**doc, **result.transform.to_json(), **refinement_fields(result), "trust": trust}
        print(f"{case}: {result.summary()}")
        return dataclasses.replace(reg, transform=result.transform), doc

    def _not_refined(self, reg, doc: dict, case: str, reason: str) -> dict:
        """The document of a pair that could not be refined: the landmark transform in use, the
        same keys as a refused refinement, and why (not a failure of the case, not a trust flag:
        the landmark transform is as trustworthy as without --refine)."""
        trust = reg.trust if isinstance(reg.trust, dict) else {}
        trust["surface"] = {"accepted": False, "reason": reason, "surface_distance_mm": None, "not_done": True,
                            "notes": []}
        reg.trust = trust
        print(f"{case}: surface refinement not done, landmark transform kept: {reason}")
        return {**doc, **not_refined_fields(reg.transform, reason, self.settings), "trust": trust}


class MissingMask(Exception):
    """A case has no (usable) predicted mask: the message says which and why."""


def _source(mask: MaskLike, modality: str) -> str:
    return f"predicted {modality} mask (in memory)" if isinstance(mask, sitk.Image) else str(mask)


def _mask_in_folder(folder: Path, case: str) -> Path:
    found = [f for f in sorted(folder.iterdir()) if f.is_file() and is_image_file(f)
             and CASE_SUFFIX.sub("", split_suffix(f)[0]) == case]
    if not found:
        raise InputError(folder, f"no mask of case {case!r} (expected e.g. {case}.nii.gz or {case}_US.nii.gz)")
    if len(found) > 1:
        raise InputError(folder, f"several masks of case {case!r} ({', '.join(f.name for f in found)}); "
                                 f"keep one")
    return found[0]


def surface_request(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Optional[SurfaceRequest]:
    """Check the surface options of a parsed command line (before any output); None without
    ``--refine surface``.  Without --mr-mask and --us-mask the masks are the predicted ones."""
    if args.refine != "surface":
        if args.us_mask is not None:
            parser.error("--us-mask is used by --refine surface only")
        return None
    if (args.mr_mask is None) != (args.us_mask is None):
        parser.error("--refine surface: give both --mr-mask and --us-mask, or neither (then each case's predicted "
                     "masks, named in its landmark JSON by lmkreg_predict with a segmentation model, are used)")
    settings = SurfaceSettings(args.trim_fraction, args.max_rotation_deg, args.max_shift_mm, args.landmark_weight)
    problem = settings.problem()
    if problem:
        parser.error(f"--refine surface: {problem}")
    folders = args.mr_dir is not None or args.us_dir is not None
    if args.mr_mask is None:
        return SurfaceRequest(None, None, settings, folders)
    for opt, path in (("--mr-mask", args.mr_mask), ("--us-mask", args.us_mask)):
        if folders and not path.is_dir():
            parser.error(f"{opt} {path}: with --mr-dir/--us-dir give a folder of masks (matched by case name)")
        if not folders and not path.is_file():
            parser.error(f"{opt} {path}: give the mask file of this pair (folders go with --mr-dir/--us-dir)")
    return SurfaceRequest(args.mr_mask, args.us_mask, settings, folders)

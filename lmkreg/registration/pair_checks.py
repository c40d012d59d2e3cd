"""Which file is which before ``lmkreg_register`` fits anything (issue 25).

A transform is only as right as the pairing of its two landmark files.  The modality of a file is
taken from its provenance record first (lmkreg.io.provenance, written by lmkreg_predict) and from
its name (a trailing ``_MR`` / ``_US``) second:

* a pair that is the same file, the same image (equal image hashes), the same modality twice, or
  swapped is refused when the provenance says so, and flagged (written, marked unreliable) when
  only the names say so;
* in folders, a file whose modality is the other one is never taken (an ``_MR`` file in --us-dir
  is not a US file); the run says how many it left out and why;
* ``CASE.json`` and ``CASE.mrk.json`` of one case (lmkreg_predict writes both; a user corrects the
  ``.mrk.json`` in 3D Slicer): the same landmarks -> the ``.json`` (it carries the confidence);
  different landmarks -> the newer file, and the run says so; equally new -> an error naming both;
* cases present on one side only are listed (and count as problems under --strict).
"""
from __future__ import annotations

from pathlib import Path

from lmkreg.errors import InputError
from lmkreg.io.provenance import modality_of, read_provenance
from lmkreg.trust.flags import PAIR, Flag, scoped_flag
from lmkreg.io.landmark_files import read_landmarks


def check_pair(mr_file: Path, us_file: Path) -> list[Flag]:
    """Refuse (InputError) a pair whose provenance shows it is wrong; return flags for what only
    the file names suggest."""
    pair = f"{mr_file} + {us_file}"
    if Path(mr_file).resolve() == Path(us_file).resolve():
        raise InputError(pair, "the same file is given as MR and as US landmarks")
    flags = []
    found = {role: modality_of(path) for role, path in (("MR", mr_file), ("US", us_file))}
    swapped = found["MR"][0] == "US" and found["US"][0] == "MR"
    for role, path in (("MR", mr_file), ("US", us_file)):
        modality, evidence = found[role]
        if modality is None or modality == role:
            continue
        source = "its provenance" if evidence == "provenance" else "its name"
        what = f"{Path(path).name} holds {modality} landmarks ({source} says so) but is given as {role}" \
            + ("; the MR and US files are swapped" if swapped else "")
        if evidence == "provenance":
            raise InputError(pair, what + "; give the MR file as --mr and the US file as --us")
        flags.append(scoped_flag(PAIR, "pair", "file_modality", what))
    a, b = read_provenance(mr_file), read_provenance(us_file)
    if a is not None and b is not None and a.input is not None and b.input is not None \
            and a.input.image_sha256 == b.input.image_sha256:
        raise InputError(pair, f"both landmark files were predicted from the same image ({a.input.path}); "
                               f"give an MR and a US file")
    if a is None or b is None:
        try:
            la, lb = read_landmarks(mr_file), read_landmarks(us_file)
            if la.names and la.equals(lb, atol=1e-9):
                flags.append(scoped_flag(PAIR, "pair", "identical_files",
                                         "the MR and US files hold identical landmarks (the same file twice?)"))
        except InputError:
            pass  # the fit reads them again and names the problem
    return flags


def takes_role(path: Path, role: str) -> tuple[bool, str]:
    """(True, '') when `path` may be a `role` (MR/US) landmark file of a folder; else (False, why)."""
    modality, evidence = modality_of(path)
    if modality is not None and modality != role:
        return False, f"{'its provenance' if evidence == 'provenance' else 'its name'} says {modality}"
    return True, ""

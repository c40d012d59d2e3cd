"""Behaviour check (issue 28): do lmkreg_predict, lmkreg_register and lmkreg_evaluate give the same
outputs before and after a refactor?

    python benchmarks/behaviour_check.py record  --checkout OLD_CHECKOUT --work W
    python benchmarks/behaviour_check.py compare --checkout NEW_CHECKOUT --work W [-o summary.json]

``record`` trains tiny models once with the quick demo (``lmkreg_demo --quick``, data under W/data,
demo output under W/demo), then runs the commands below with OLD_CHECKOUT's code and keeps their
outputs, exit codes, stdout and stderr in W/reference (never overwritten without --force).
``compare`` runs the same commands with NEW_CHECKOUT's code on the SAME trained models and inputs
(no retraining; a checksum manifest proves it) into W/compare and compares file by file:

* JSON (.json, .mrk.json) structurally: floats equal within 1e-5 relative or 1e-4 absolute (mm),
  every other value exactly; keys the new code adds are accepted only from an allow-list
  (``--allow-key``, default ``flag_details`` and ``provenance``) and printed; a key removed or a
  value changed is a difference.  Keys that hold run times or versions are skipped.
* text (.csv, .md, .txt, stdout, stderr): line by line after replacing the run folders by
  placeholders and dropping lines with timestamps, durations or versions; numbers within the
  float tolerance or one unit of their last printed digit.
* ITK transforms (.tfm): parameters numerically, other lines as text.
* images (.nii.gz, .png, ...): geometry and voxels through SimpleITK, voxels within --image-atol.
* any other file byte for byte.

It runs the commands only through their console-script names, resolved from the checkout's own
setup.py (or pyproject.toml), because the refactor moves the modules behind them: each runs as
``python -c "from MODULE import FUNC; ..."`` with PYTHONPATH=CHECKOUT, one intra-op thread
(LMKREG_NUM_THREADS=1, so the floats do not depend on the load) and the demo's data folders.
This file imports nothing from lmkreg: it must judge the code, not share it.

Exit status of compare: 0 same behaviour, 1 a difference, 2 the inputs or models changed since
the reference (the comparison would be meaningless).
"""
from __future__ import annotations

import argparse
import ast
import fnmatch
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

DATASET_ID = "901"  # lmkreg.demo.DEMO_DATASET_ID["quick"]
TRAINER = "HeatmapMatchingTrainer"  # lmkreg.demo.DEMO_TRAINER
MARKER = ".behaviour_check"  # a folder holding this file was written by this script (may be replaced)
REL_TOL, ABS_TOL = 1e-5, 1e-4
DEFAULT_ALLOWED_KEYS = ("flag_details", "provenance")
# JSON keys whose values are run times, dates or versions: skipped on both sides
VOLATILE_KEY = re.compile(r"(^|_)(time|times|timestamp|date|created|modified|version|versions|seconds|elapsed|"
                          r"duration|host|hostname|pid|user|started|finished)($|_)", re.IGNORECASE)
# text lines that carry run times, dates or versions: dropped on both sides
VOLATILE_LINE = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}|\bversion\b|\bin \d+(\.\d+)? ?(s|sec|seconds|min)\b|"
                           r"\d+(\.\d+)? ?(s|min) (wall|elapsed)|it/s|s/it|\belapsed\b|\btook\b|"
                           r"\[\d{2}:\d{2}:\d{2}\]|threads: \d+ intra-op", re.IGNORECASE)
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)\b")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
TEXT_SUFFIXES = (".csv", ".tsv", ".md", ".txt", ".log", ".svg", ".html")


# ---- running the checkout's console commands ---------------------------------------------------

def console_scripts(checkout: Path) -> dict[str, tuple[str, str]]:
    """{name: (module, function)} of the checkout's console scripts, from its setup.py
    (``entry_points={"console_scripts": ["name=module:func", ...]}``) or pyproject.toml."""
    found: dict[str, tuple[str, str]] = {}
    setup = checkout / "setup.py"
    if setup.is_file():
        for node in ast.walk(ast.parse(setup.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                m = re.fullmatch(r"\s*([\w.-]+)\s*=\s*([\w.]+)\s*:\s*(\w+)\s*", node.value)
                if m:
                    found[m.group(1)] = (m.group(2), m.group(3))
    pyproject = checkout / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        scripts = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("scripts", {})
        for name, target in scripts.items():
            module, _, func = target.partition(":")
            found.setdefault(name, (module.strip(), func.strip()))
    if not found:
        raise SystemExit(f"error: {checkout}: no console_scripts found in setup.py or pyproject.toml")
    return found


@dataclass
class Run:
    """One command run: what ran and what it said."""

    step: str
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def work_env(checkout: Path, work: Path, pin_threads: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMKREG_")}
    env.update({"PYTHONPATH": str(checkout), "LMKREG_raw": str(work / "data" / "raw"),
                "LMKREG_preprocessed": str(work / "data" / "preprocessed"),
                "LMKREG_results": str(work / "data" / "results"), "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"})
    if pin_threads:  # one intra-op thread: float sums in the same order whatever the load
        env.update({"LMKREG_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    return env


def run_command(checkout: Path, work: Path, step: str, name: str, args: Sequence[str],
                pin_threads: bool = True, stream: bool = False) -> Run:
    """Run console script `name` of `checkout` with `args` (cwd = work)."""
    scripts = console_scripts(checkout)
    if name not in scripts:
        raise SystemExit(f"error: {checkout}: no console script {name!r} (has {', '.join(sorted(scripts))})")
    module, func = scripts[name]
    code = f"import sys; from {module} import {func} as f; sys.argv[0] = {name!r}; sys.exit(f())"
    argv = [sys.executable, "-c", code, *map(str, args)]
    print(f"[{time.strftime('%H:%M:%S')}] {step}: {name} {' '.join(map(str, args))}", flush=True)
    t0 = time.perf_counter()
    if stream:  # the demo: show its progress, keep nothing but the exit code
        proc = subprocess.run(argv, cwd=work, env=work_env(checkout, work, pin_threads))
        out = err = ""
    else:
        proc = subprocess.run(argv, cwd=work, env=work_env(checkout, work, pin_threads), capture_output=True,
                              text=True)
        out, err = proc.stdout, proc.stderr
    run = Run(step, [name, *map(str, args)], proc.returncode, out, err, time.perf_counter() - t0)
    print(f"      exit {run.returncode} after {run.seconds:.0f} s", flush=True)
    if run.returncode not in (0, 3) and err:
        print("      " + "\n      ".join(err.strip().splitlines()[-8:]), flush=True)
    return run


# ---- the recorded commands --------------------------------------------------------------------

def demo_folder(work: Path) -> Path:
    return work / "demo"


def dataset_folder(work: Path) -> Path:
    found = sorted((work / "data" / "raw").glob(f"Dataset{DATASET_ID}_*"))
    if not found:
        raise SystemExit(f"error: {work / 'data' / 'raw'}: no Dataset{DATASET_ID}_* (run record first)")
    return found[0]


def model_files(work: Path) -> list[Path]:
    root = work / "data" / "results"
    return sorted(p for p in root.rglob("*") if p.is_file() and TRAINER in str(p.relative_to(root)))


def ensure_demo(checkout: Path, work: Path) -> None:
    """Train the quick demo's models once (its data, plans and models under W/data)."""
    done = demo_folder(work) / "models_verdict.json"
    if done.is_file() and model_files(work):
        print(f"reusing the demo's models ({done.parent})")
        return
    run = run_command(checkout, work, "demo", "lmkreg_demo", ["--quick", "-o", demo_folder(work)], pin_threads=False,
                      stream=True)
    if run.returncode != 0:
        raise SystemExit(f"error: lmkreg_demo --quick failed (exit {run.returncode})")


def prepare_inputs(work: Path) -> dict[str, Path]:
    """Per-modality folders of the ground-truth test masks (symlinks: a mask folder of
    --refine surface holds one mask per case) and the demo's test image folders."""
    ds = dataset_folder(work)
    inputs = work / "inputs"
    paths = {}
    for modality in ("MR", "US"):
        folder = inputs / "masks" / modality
        folder.mkdir(parents=True, exist_ok=True)
        for mask in sorted((ds / "masksTs").glob(f"*_{modality}.nii.gz")):
            link = folder / mask.name
            if not link.exists():
                link.symlink_to(mask.resolve())
        paths[f"masks_{modality}"] = folder
        paths[f"images_{modality}"] = demo_folder(work) / "test_images" / modality
        if not any(paths[f"images_{modality}"].iterdir()):
            raise SystemExit(f"error: {paths[f'images_{modality}']}: no test images (run record first)")
    return paths


def demo_models_segment(work: Path) -> bool:
    """Whether the demo's models predicted prostate masks (their landmark JSONs name them)."""
    return any(p.name.endswith("_prostate.nii.gz") for p in (demo_folder(work) / "predictions").rglob("*"))


def commands(work: Path, out: Path) -> list[tuple[str, str, list]]:
    """(step, console script, arguments) of every compared command; outputs under `out`."""
    inp = prepare_inputs(work)
    pred = {m: out / "predict" / m for m in ("MR", "US")}
    steps: list[tuple[str, str, list]] = []
    for m in ("MR", "US"):
        steps.append((f"predict_{m}", "lmkreg_predict", ["-i", inp[f"images_{m}"], "-o", pred[m], "-d", DATASET_ID,
                                                         "-m", m, "-tr", TRAINER, "-f", "0", "--device", "cpu",
                                                         "--no-progress"]))
    pairs = ["--mr-dir", pred["MR"], "--us-dir", pred["US"]]
    if demo_models_segment(work):  # as the demo registers: refined on the predicted surfaces
        steps.append(("register", "lmkreg_register", pairs + ["-o", out / "register", "--refine", "surface"]))
    else:
        steps.append(("register", "lmkreg_register", pairs + ["-o", out / "register"]))
    steps.append(("register_weighted", "lmkreg_register", pairs + ["-o", out / "register_weighted", "--weighted"]))
    # the surface refinement (ICP, accept rule) on the ground-truth masks: the demo's models do not segment
    steps.append(("register_surface", "lmkreg_register", pairs + [
        "-o", out / "register_surface", "--refine", "surface", "--mr-mask", inp["masks_MR"],
        "--us-mask", inp["masks_US"]]))
    # one shot on the first test pair: predicts both volumes, registers, resamples the MR and its mask into US space
    mr_image = sorted(inp["images_MR"].iterdir())[0]
    case = re.sub(r"_MR\.nii\.gz$", "", mr_image.name)
    us_image = inp["images_US"] / f"{case}_US.nii.gz"
    steps.append(("register_one_shot", "lmkreg_register", [
        "--mr-image", mr_image, "--us-image", us_image, "--mr-mask", inp["masks_MR"] / f"{case}_MR.nii.gz",
        "-d", DATASET_ID, "-tr", TRAINER, "-f", "0", "-o", out / "register_one_shot"]))
    steps.append(("evaluate", "lmkreg_evaluate", ["-d", DATASET_ID, "--mr-pred", pred["MR"], "--us-pred", pred["US"],
                                                  "-o", out / "evaluate", "--split", "Ts", "--qc", "3",
                                                  "--workers", "1", "--no-progress"]))
    return steps


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_manifest(work: Path) -> dict[str, str]:
    """Checksums of everything the commands read: trained models, test images, masks, ground truth."""
    files = model_files(work)
    ds = dataset_folder(work)
    files += sorted(p for sub in ("imagesTs", "landmarksTs", "masksTs", "transformsTs") for p in (ds / sub).rglob("*")
                    if p.is_file())
    files.append(ds / "dataset.json")
    return {str(p.relative_to(work)): sha256(p) for p in files}


def fresh_folder(folder: Path, force: bool) -> None:
    """Empty `folder` for a run: only a folder this script wrote (its marker inside) is replaced."""
    if folder.exists():
        if not (folder / MARKER).is_file():
            raise SystemExit(f"error: {folder} exists and was not written by behaviour_check; move it away")
        if not force:
            raise SystemExit(f"error: {folder} holds a recorded run; pass --force to replace it")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("written by benchmarks/behaviour_check.py\n")


def run_all(checkout: Path, work: Path, folder: Path) -> None:
    """Run every command into folder/outputs; keep runs.json (argv, exit codes, stdout, stderr)."""
    out = folder / "outputs"
    runs = [run_command(checkout, work, step, name, args) for step, name, args in commands(work, out)]
    doc = {"checkout": str(checkout), "work": str(work), "output_root": str(out),
           "git_commit": _git_commit(checkout), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
           "runs": [asdict(r) for r in runs]}
    (folder / "runs.json").write_text(json.dumps(doc, indent=1) + "\n")


def _git_commit(checkout: Path) -> Optional[str]:
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def record(args: argparse.Namespace) -> int:
    work, checkout = args.work.resolve(), args.checkout.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ref = work / "reference"
    if ref.exists() and not args.force:  # check before the demo's minutes of training
        raise SystemExit(f"error: {ref} exists; the lead compares against it (pass --force to replace it)")
    ensure_demo(checkout, work)
    fresh_folder(ref, args.force)
    (ref / "manifest.json").write_text(json.dumps(input_manifest(work), indent=1) + "\n")
    run_all(checkout, work, ref)
    runs = json.loads((ref / "runs.json").read_text())["runs"]
    files = [p for p in (ref / "outputs").rglob("*") if p.is_file()]
    print(f"reference: {ref} ({len(files)} output files; exit codes "
          + ", ".join(f"{r['step']} {r['returncode']}" for r in runs) + ")")
    return 0


# ---- comparing --------------------------------------------------------------------------------

@dataclass
class Row:
    item: str
    kind: str
    status: str  # same | within tolerance | allowed additions | DIFFERENT | MISSING | ADDED
    detail: str = ""
    added_keys: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status in ("DIFFERENT", "MISSING", "ADDED")


class Normaliser:
    """Replaces the run-specific folders in text by placeholders."""

    def __init__(self, output_root: str, work: str, checkout: str):
        self.pairs = sorted([(output_root, "<OUT>"), (work, "<W>"), (checkout, "<CHECKOUT>"),
                             (sys.executable, "<PYTHON>")], key=lambda p: -len(p[0]))

    def __call__(self, text: str) -> str:
        for old, new in self.pairs:
            if old:
                text = text.replace(old, new)
        return text


def close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= ABS_TOL or abs(a - b) <= REL_TOL * max(abs(a), abs(b))


def _last_digit_unit(token: str) -> float:
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 10.0 ** (-decimals + (int(exponent) if exponent else 0))


def same_text_line(a: str, b: str) -> tuple[bool, bool]:
    """(equal within tolerance, exactly equal): words exactly, numbers within the float tolerance
    or one unit of their last printed digit (a rounding flip)."""
    if a == b:
        return True, True
    if NUMBER.sub("#", a) != NUMBER.sub("#", b):
        return False, False
    for x, y in zip(NUMBER.findall(a), NUMBER.findall(b)):
        fx, fy = float(x), float(y)
        if not (close(fx, fy) or abs(fx - fy) <= 1.0001 * max(_last_digit_unit(x), _last_digit_unit(y))):
            return False, False
    return True, False


def compare_text(a: str, b: str, norm_a: Normaliser, norm_b: Normaliser, item: str, kind: str) -> Row:
    la = [ln.rstrip() for ln in norm_a(a).splitlines() if not VOLATILE_LINE.search(ln) and ln.strip()]
    lb = [ln.rstrip() for ln in norm_b(b).splitlines() if not VOLATILE_LINE.search(ln) and ln.strip()]
    exact = True
    for i, (x, y) in enumerate(zip(la, lb)):
        ok, ex = same_text_line(x, y)
        if not ok:
            return Row(item, kind, "DIFFERENT", f"line {i + 1}: {x[:90]!r} -> {y[:90]!r}")
        exact &= ex
    if len(la) != len(lb):
        extra = la[len(lb)] if len(la) > len(lb) else lb[len(la)]
        return Row(item, kind, "DIFFERENT", f"{len(la)} -> {len(lb)} lines (first unmatched: {extra[:90]!r})")
    return Row(item, kind, "same" if exact else "within tolerance", f"{len(la)} lines")


class JsonDiff:
    def __init__(self, norm_a: Normaliser, norm_b: Normaliser, allowed: set[str]):
        self.norm_a, self.norm_b, self.allowed = norm_a, norm_b, allowed
        self.problems: list[str] = []
        self.added: list[str] = []
        self.inexact = False

    def walk(self, a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in a:
                if VOLATILE_KEY.search(str(k)):
                    continue
                if k not in b:
                    self.problems.append(f"{path}.{k} removed")
                else:
                    self.walk(a[k], b[k], f"{path}.{k}")
            for k in b:
                if k not in a and not VOLATILE_KEY.search(str(k)):
                    if k in self.allowed:
                        self.added.append(f"{path}.{k}")
                    else:
                        self.problems.append(f"{path}.{k} added (not in the allow-list)")
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                self.problems.append(f"{path}: {len(a)} -> {len(b)} items")
            for i, (x, y) in enumerate(zip(a, b)):
                self.walk(x, y, f"{path}[{i}]")
        elif isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
            if a is not b and a != b:
                self.problems.append(f"{path}: {a!r} -> {b!r}")
        elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if isinstance(a, int) and isinstance(b, int):
                if a != b:
                    self.problems.append(f"{path}: {a} -> {b}")
            elif not close(float(a), float(b)):
                self.problems.append(f"{path}: {a!r} -> {b!r}")
            elif a != b:
                self.inexact = True
        elif isinstance(a, str) and isinstance(b, str):
            ok, exact = same_text_line(self.norm_a(a), self.norm_b(b))
            if not ok:
                self.problems.append(f"{path}: {a[:80]!r} -> {b[:80]!r}")
            self.inexact |= not exact
        else:
            self.problems.append(f"{path}: {type(a).__name__} -> {type(b).__name__}")


def compare_json(pa: Path, pb: Path, norm_a: Normaliser, norm_b: Normaliser, item: str, allowed: set[str]) -> Row:
    try:
        a, b = json.loads(pa.read_text()), json.loads(pb.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        return Row(item, "json", "DIFFERENT", f"unreadable: {exc}")
    d = JsonDiff(norm_a, norm_b, allowed)
    d.walk(a, b, "$")
    if d.problems:
        more = f" (+{len(d.problems) - 3} more)" if len(d.problems) > 3 else ""
        return Row(item, "json", "DIFFERENT", "; ".join(d.problems[:3]) + more, d.added)
    status = "allowed additions" if d.added else ("within tolerance" if d.inexact else "same")
    return Row(item, "json", status, ", ".join(d.added[:4]), d.added)


def compare_tfm(pa: Path, pb: Path, norm_a: Normaliser, norm_b: Normaliser, item: str) -> Row:
    la, lb = pa.read_text().splitlines(), pb.read_text().splitlines()
    if len(la) != len(lb):
        return Row(item, "tfm", "DIFFERENT", f"{len(la)} -> {len(lb)} lines")
    worst = 0.0
    for x, y in zip(la, lb):
        kx, _, vx = x.partition(":")
        ky, _, vy = y.partition(":")
        if kx.strip() in ("Parameters", "FixedParameters") and kx == ky:
            nx, ny = [float(v) for v in vx.split()], [float(v) for v in vy.split()]
            if len(nx) != len(ny) or not all(close(p, q) for p, q in zip(nx, ny)):
                return Row(item, "tfm", "DIFFERENT", f"{kx}: {vx.strip()[:60]} -> {vy.strip()[:60]}")
            worst = max([worst] + [abs(p - q) for p, q in zip(nx, ny)])
        elif norm_a(x) != norm_b(y):
            return Row(item, "tfm", "DIFFERENT", f"{x[:60]!r} -> {y[:60]!r}")
    return Row(item, "tfm", "same" if worst == 0 else "within tolerance", f"max parameter change {worst:.2g}")


def compare_image(pa: Path, pb: Path, item: str, atol: float) -> Row:
    import numpy as np
    import SimpleITK as sitk

    a, b = sitk.ReadImage(str(pa)), sitk.ReadImage(str(pb))
    if a.GetSize() != b.GetSize() or a.GetPixelIDValue() != b.GetPixelIDValue() \
            or a.GetNumberOfComponentsPerPixel() != b.GetNumberOfComponentsPerPixel():
        return Row(item, "image", "DIFFERENT", f"{a.GetSize()} {a.GetPixelIDTypeAsString()} -> "
                                               f"{b.GetSize()} {b.GetPixelIDTypeAsString()}")
    for what in ("GetSpacing", "GetOrigin", "GetDirection"):
        ga, gb = np.asarray(getattr(a, what)()), np.asarray(getattr(b, what)())
        if not np.allclose(ga, gb, rtol=0, atol=1e-6):
            return Row(item, "image", "DIFFERENT", f"{what[3:].lower()} {ga.round(6).tolist()} -> {gb.round(6).tolist()}")
    va, vb = sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)
    integer = np.issubdtype(va.dtype, np.integer)
    diff = np.abs(va.astype(np.float64) - vb.astype(np.float64))
    worst = float(diff.max()) if diff.size else 0.0
    limit = 0.0 if integer else atol
    if not worst <= limit:
        return Row(item, "image", "DIFFERENT", f"max voxel change {worst:.3g} > {limit:g} "
                                               f"({int((diff > limit).sum())} voxels)")
    return Row(item, "image", "same" if worst == 0 else "within tolerance", f"max voxel change {worst:.2g}")


def kind_of(name: str) -> str:
    low = name.lower()
    if low.endswith(".json"):
        return "json"
    if low.endswith(".tfm"):
        return "tfm"
    if low.endswith(IMAGE_SUFFIXES):
        return "image"
    if low.endswith(TEXT_SUFFIXES):
        return "text"
    return "bytes"


def compare_trees(ref: Path, new: Path, norm_a: Normaliser, norm_b: Normaliser, allowed: set[str],
                  allow_new_files: Sequence[str], atol: float) -> list[Row]:
    files_a = {str(p.relative_to(ref)) for p in ref.rglob("*") if p.is_file()}
    files_b = {str(p.relative_to(new)) for p in new.rglob("*") if p.is_file()}
    rows = []
    for rel in sorted(files_a | files_b):
        item = f"outputs/{rel}"
        if rel not in files_b:
            rows.append(Row(item, kind_of(rel), "MISSING", "written before, not now"))
            continue
        if rel not in files_a:
            allowed_file = any(fnmatch.fnmatch(rel, g) for g in allow_new_files)
            rows.append(Row(item, kind_of(rel), "allowed additions" if allowed_file else "ADDED", "new file"))
            continue
        pa, pb, kind = ref / rel, new / rel, kind_of(rel)
        try:
            if kind == "json":
                rows.append(compare_json(pa, pb, norm_a, norm_b, item, allowed))
            elif kind == "tfm":
                rows.append(compare_tfm(pa, pb, norm_a, norm_b, item))
            elif kind == "image":
                rows.append(compare_image(pa, pb, item, atol))
            elif kind == "text":
                rows.append(compare_text(pa.read_text(), pb.read_text(), norm_a, norm_b, item, kind))
            else:
                same = pa.read_bytes() == pb.read_bytes()
                rows.append(Row(item, kind, "same" if same else "DIFFERENT", "" if same else "bytes differ"))
        except Exception as exc:  # an unreadable file is a difference, not a crash of the check
            rows.append(Row(item, kind, "DIFFERENT", f"could not compare: {type(exc).__name__}: {exc}"))
    return rows


def compare_runs(ref_doc: dict, new_doc: dict, norm_a: Normaliser, norm_b: Normaliser) -> list[Row]:
    rows = []
    new_runs = {r["step"]: r for r in new_doc["runs"]}
    for r in ref_doc["runs"]:
        n = new_runs.get(r["step"])
        if n is None:
            rows.append(Row(f"{r['step']}: run", "exit", "MISSING", "not run"))
            continue
        ok = r["returncode"] == n["returncode"]
        rows.append(Row(f"{r['step']}: exit code", "exit", "same" if ok else "DIFFERENT",
                        f"{r['returncode']}" + ("" if ok else f" -> {n['returncode']}")))
        for stream in ("stdout", "stderr"):
            rows.append(compare_text(r[stream], n[stream], norm_a, norm_b, f"{r['step']}: {stream}", stream))
    return rows


def print_table(rows: Sequence[Row]) -> None:
    width = min(max(len(r.item) for r in rows), 70)
    print(f"{'item':<{width}}  {'kind':<6}  {'status':<17}  detail")
    for r in rows:
        print(f"{r.item:<{width}}  {r.kind:<6}  {r.status:<17}  {r.detail}")


def compare(args: argparse.Namespace) -> int:
    work, checkout = args.work.resolve(), args.checkout.resolve()
    ref = (args.reference or work / "reference").resolve()
    if not (ref / "runs.json").is_file():
        raise SystemExit(f"error: {ref / 'runs.json'} not found: run record first")
    recorded = json.loads((ref / "manifest.json").read_text())
    now = input_manifest(work)
    changed = sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
    if changed:
        print(f"error: the models or inputs changed since the reference was recorded ({len(changed)} file(s), e.g. "
              f"{changed[0]}): the comparison would be meaningless; record again", file=sys.stderr)
        return 2
    new = work / "compare"
    if args.no_run:  # compare again (another reference copy or allow-list) without running the commands
        if not (new / "runs.json").is_file():
            raise SystemExit(f"error: {new / 'runs.json'} not found: run compare without --no-run first")
    else:
        fresh_folder(new, force=True)
        run_all(checkout, work, new)
    ref_doc, new_doc = json.loads((ref / "runs.json").read_text()), json.loads((new / "runs.json").read_text())
    norm_a = Normaliser(ref_doc["output_root"], ref_doc["work"], ref_doc["checkout"])
    norm_b = Normaliser(new_doc["output_root"], new_doc["work"], new_doc["checkout"])
    allowed = set(DEFAULT_ALLOWED_KEYS) | set(args.allow_key or [])
    rows = compare_runs(ref_doc, new_doc, norm_a, norm_b)
    rows += compare_trees(ref / "outputs", new / "outputs", norm_a, norm_b, allowed, args.allow_new_file or [],
                          args.image_atol)
    print()
    print_table(rows)
    failed = [r for r in rows if r.failed]
    added = sorted({k.rsplit(".", 1)[-1] for r in rows for k in r.added_keys})
    counts = {s: sum(r.status == s for r in rows) for s in dict.fromkeys(r.status for r in rows)}
    print(f"\n{len(rows)} items: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if added:
        print(f"keys added by the new code (allow-list): {', '.join(added)} in "
              f"{sum(bool(r.added_keys) for r in rows)} file(s)")
    print("BEHAVIOUR UNCHANGED" if not failed else f"BEHAVIOUR CHANGED: {len(failed)} difference(s)")
    summary = {"reference": str(ref), "reference_commit": ref_doc.get("git_commit"), "checkout": str(checkout),
               "checkout_commit": new_doc.get("git_commit"), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
               "tolerance": {"relative": REL_TOL, "absolute_mm": ABS_TOL, "image_atol": args.image_atol},
               "allowed_keys": sorted(allowed), "added_keys": added, "unchanged": not failed, "counts": counts,
               "differences": [asdict(r) for r in failed], "rows": [asdict(r) for r in rows]}
    out = args.output or new / "summary.json"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"summary: {out}")
    return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("record", "compare"):
        s = sub.add_parser(name)
        s.add_argument("--checkout", type=Path, required=True, help="lmkreg checkout whose code runs")
        s.add_argument("--work", type=Path, required=True, help="work folder (data, demo, reference, compare)")
        if name == "record":
            s.add_argument("--force", action="store_true", help="replace an existing reference")
        else:
            s.add_argument("-o", "--output", type=Path, help="JSON summary (default W/compare/summary.json)")
            s.add_argument("--reference", type=Path, help="reference folder (default W/reference)")
            s.add_argument("--allow-key", action="append", metavar="KEY",
                           help=f"a JSON key the new code may add (default {', '.join(DEFAULT_ALLOWED_KEYS)})")
            s.add_argument("--allow-new-file", action="append", metavar="GLOB",
                           help="an output file (glob relative to outputs/) the new code may add")
            s.add_argument("--no-run", action="store_true",
                           help="compare the outputs of the last compare run again, without running the commands")
            s.add_argument("--image-atol", type=float, default=1e-4,
                           help="largest voxel change of a float image (integer images: none)")
    args = p.parse_args(argv)
    return record(args) if args.command == "record" else compare(args)


if __name__ == "__main__":
    sys.exit(main())

"""Shared plumbing for the thin console commands: one way to build a parser (plain help text,
``--version``), one way to report errors, one way to choose a trained model."""
from __future__ import annotations

import argparse
import functools
import re
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from lmkreg.errors import ConfigurationError, FileError, LmkregError

_MARKUP = re.compile(r"``(.+?)``", re.DOTALL)


def plain(text: Optional[str]) -> Optional[str]:
    """Help text without reStructuredText markup: ``name`` becomes name (users read it in a terminal)."""
    return None if text is None else _MARKUP.sub(r"\1", text)


def version_text(prog: str) -> str:
    from lmkreg import __version__
    return f"{prog} (lmkreg {__version__})"


def make_parser(prog: str, description: Optional[str] = None, epilog: Optional[str] = None,
                raw: bool = True) -> argparse.ArgumentParser:
    """The ArgumentParser every lmkreg command starts from: plain-text description (layout kept when
    `raw`) and ``--version``."""
    parser = argparse.ArgumentParser(prog=prog, description=plain(description), epilog=plain(epilog),
                                     formatter_class=argparse.RawDescriptionHelpFormatter if raw
                                     else argparse.HelpFormatter)
    add_version(parser)
    return parser


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--version`` (prints the command and the lmkreg version, then exits)."""
    parser.add_argument("--version", action="version", version=version_text(parser.prog),
                        help="print the lmkreg version and exit")
    return parser


def error_line(subject: object, exc: BaseException) -> str:
    """'SUBJECT: problem' without naming the file twice: an lmkreg error about the subject itself
    already starts with its path (an error about another file, e.g. an output, keeps the subject)."""
    if isinstance(exc, FileError) and exc.path is not None and str(exc.path) == str(subject):
        return str(exc)
    return f"{subject}: {exc}"


def friendly_errors(main: Callable[[Optional[Sequence[str]]], int]) -> Callable[[Optional[Sequence[str]]], int]:
    """Turn LmkregError into 'error: <file>: <problem>' on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(argv: Optional[Sequence[str]] = None) -> int:
        try:
            return main(argv)
        except LmkregError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper


def trained_trainers(results_dataset_folder: Path, modality: str) -> list[str]:
    """Trainer names with a trained model folder ``TRAINER__MODALITY`` in the dataset's results."""
    folder = Path(results_dataset_folder)
    if not folder.is_dir():
        return []
    suffix = f"__{modality}"
    return sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.is_dir() and p.name.endswith(suffix))


def choose_trainer(results_dataset_folder: Path, modality: str, trainer: Optional[str]) -> str:
    """The trainer whose model to use: the one given, else the only one trained for this modality;
    with several (or none) trained, say which exist and how to choose."""
    if trainer:
        return trainer
    found = trained_trainers(results_dataset_folder, modality)
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigurationError(f"{results_dataset_folder}: no trained {modality} model (no TRAINER__{modality} "
                                 f"folder); train one with lmkreg_train")
    raise ConfigurationError(f"{results_dataset_folder}: {len(found)} trained {modality} models ({', '.join(found)}); "
                             f"choose one with -tr/--trainer (lmkreg_find_best_configuration ranks them)")

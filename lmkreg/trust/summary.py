"""The one rule every command follows for unreliable results: they are written (a user may
want to look) and marked in their files, listed in a summary at the end of the run, and make
the exit status non-zero only under ``--strict``.

Why not fail by default: a flag is a warning computed from statistics (it fires on a few
percent of good cases by design), and a batch run that stops or returns an error for a
warning hides the other results; scripts that must not go on with a flagged case ask for
``--strict`` and get exit status 3 (1 stays "a case failed", 2 is argparse's usage error).
"""
from __future__ import annotations

import sys
from typing import Mapping, Optional, Sequence, TextIO

from lmkreg.trust.flags import Flag

STRICT_EXIT = 3
STRICT_HELP = ("exit with status 3 when any result is flagged unreliable (flagged results are still written and "
               "listed; without this option they do not change the exit status)")


def print_unreliable(unreliable: Mapping[str, Sequence[Flag]], total: int, what: str = "case",
                     stream: Optional[TextIO] = None) -> None:
    """The end-of-run summary: how many of `total` were flagged, then one line per flagged one."""
    stream = stream or sys.stdout  # looked up now: a replaced sys.stdout (tests, redirection) is honoured
    print(f"{len(unreliable)} of {total} {what}(s) flagged unreliable" + (":" if unreliable else ""), file=stream)
    for name, flags in unreliable.items():
        print(f"  unreliable: {name}: {'; '.join(f.text for f in flags)}", file=stream)


def exit_status(failed: int, unreliable: int, strict: bool) -> int:
    """1 if any case failed, else STRICT_EXIT if strict and any is unreliable, else 0."""
    if failed:
        return 1
    return STRICT_EXIT if strict and unreliable else 0

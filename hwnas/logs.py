"""Logging for hwnas: library modules log through :mod:`logging`; the CLI decides what is shown.

Messages go to stderr through ``tqdm.write``, so a progress bar on the terminal is not torn by a
log line, and stdout stays free for results (``--json``). Nothing is configured on import: a
notebook or another program that imports hwnas keeps its own logging setup.
"""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

ROOT = "hwnas"


class TqdmHandler(logging.Handler):
    """Writes each record on its own line to stderr, above any live tqdm bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
            sys.stderr.flush()
        except Exception:  # a closed stream must not turn a log line into a crash
            self.handleError(record)


def setup_logging(verbosity: int = 0) -> None:
    """Show hwnas's logs on stderr: warnings only at ``verbosity`` < 0 (-q), info at 0, debug at > 0 (-v)."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, TqdmHandler)]:
        logger.removeHandler(handler)
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False

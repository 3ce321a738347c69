"""Printing results: human text by default, exactly one JSON object on stdout with ``--json``."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from hwnas.textfmt import table


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    """Print ``data`` as JSON when ``--json`` was given, else ``text``."""
    print(json.dumps(data) if getattr(args, "json", False) else text)


def log(message: str) -> None:
    """Progress and logs of a command: through logging to stderr, so stdout stays machine-readable."""
    logging.getLogger("hwnas.commands").info(message)


__all__ = ["add_json_flag", "emit", "log", "table"]

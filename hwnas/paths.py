"""Where hwnas keeps its files: one data directory, ``$HWNAS_HOME`` or the platform's user data dir.

Measurements, predictors and user target files all live under it, so that pointing
``HWNAS_HOME`` somewhere else (a test's temporary directory, a shared disk) moves all of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_data_dir

HOME_ENV = "HWNAS_HOME"


def data_dir() -> Path:
    """The data directory (not created here; writers create what they need)."""
    override = os.environ.get(HOME_ENV)
    return Path(override) if override else Path(user_data_dir("hwnas"))

"""Where hwnas keeps its files: one data directory, ``$HWNAS_HOME`` or the platform's user data dir.

Measurements, predictors and user target files all live under it, so that pointing
``HWNAS_HOME`` somewhere else (a test's temporary directory, a shared disk) moves all of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir, user_data_dir

HOME_ENV = "HWNAS_HOME"
CACHE_ENV = "HWNAS_CACHE"


def data_dir() -> Path:
    """The data directory (not created here; writers create what they need)."""
    override = os.environ.get(HOME_ENV)
    return Path(override) if override else Path(user_data_dir("hwnas"))


def cache_dir() -> Path:
    """Where rebuildable downloads live (the emulated board's root and wheels): ``$HWNAS_CACHE``,
    else ``$HWNAS_HOME/cache`` when the data directory is moved, else the platform's user cache dir."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    home = os.environ.get(HOME_ENV)
    return Path(home) / "cache" if home else Path(user_cache_dir("hwnas"))

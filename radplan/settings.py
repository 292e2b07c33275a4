"""Where radplan keeps its data: one home folder, RADPLAN_HOME (default ``.radplan`` in the working directory)."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV_VAR = "RADPLAN_HOME"


def radplan_home() -> Path:
    return Path(os.environ.get(HOME_ENV_VAR, Path.cwd() / ".radplan")).resolve()


def landing_dir(home: Path | None = None) -> Path:
    return (home or radplan_home()) / "landing"


def lake_dir(home: Path | None = None) -> Path:
    return (home or radplan_home()) / "lake"


def dagster_home(home: Path | None = None) -> Path:
    return (home or radplan_home()) / "dagster_home"

"""The Dagster instance for the embedded default: sqlite storage under RADPLAN_HOME/dagster_home, telemetry off."""

from __future__ import annotations

import os
from pathlib import Path

from radplan.lake import atomic_write_text
from radplan.settings import dagster_home

DAGSTER_YAML = """\
# Written by radplan for the embedded default (sqlite storage in this folder).
# Production: replace with Postgres storage and a k8s/ECS run launcher (docs/deploy.md).
telemetry:
  enabled: false
"""


def ensure_dagster_home(home: Path | None = None) -> Path:
    """Create DAGSTER_HOME with a dagster.yaml that disables telemetry, and export it."""
    folder = Path(os.environ["DAGSTER_HOME"]) if "DAGSTER_HOME" in os.environ and home is None else dagster_home(home)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "dagster.yaml"
    if not config.exists():
        atomic_write_text(config, DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(folder)
    return folder

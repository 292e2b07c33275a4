"""MLflow tracking: a sqlite file + local artifact folder by default, a tracking server in production."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field


class MlflowResource(ConfigurableResource):
    tracking_uri: str = Field(description="sqlite:///... (embedded) or http(s)://mlflow-server")
    artifact_root: str = Field(description="Artifact location for new experiments (folder or s3://...)")

    @property
    def artifact_path(self) -> Path:
        return Path(self.artifact_root)

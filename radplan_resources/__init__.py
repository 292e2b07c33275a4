"""Dagster resources: every piece of I/O and configuration the assets use."""

from radplan_resources.deid import DeidKeyResource
from radplan_resources.lake import LakeResource
from radplan_resources.landing import LandingZoneResource
from radplan_resources.mlflow import MlflowResource
from radplan_resources.pacs import LandingFolderPacs, OrthancPacs, PacsResource
from radplan_resources.spark import SparkResource

__all__ = [
    "DeidKeyResource",
    "LakeResource",
    "LandingFolderPacs",
    "LandingZoneResource",
    "MlflowResource",
    "OrthancPacs",
    "PacsResource",
    "SparkResource",
]

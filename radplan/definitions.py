"""The one Definitions object: every asset, check, job, schedule, sensor and resource (workspace.yaml loads it)."""

from __future__ import annotations

import os

from dagster import Definitions, EnvVar, load_asset_checks_from_modules, load_assets_from_modules

from radplan.pseudonym import demo_mode
from radplan.runtime import disable_telemetry
from radplan_resources import (
    DeidKeyResource,
    LakeResource,
    LandingFolderPacs,
    LandingZoneResource,
    MlflowResource,
    OrthancPacs,
    SparkResource,
)

disable_telemetry()
# A missing or short key is refused before the asset modules (torch, MONAI, Spark) are imported: a
# misconfigured start-up fails in about two seconds instead of after the whole import.
DeidKeyResource(demo=demo_mode()).validate()

from jobs import ALL_JOBS, ALL_SCHEDULES  # noqa: E402
from radplan.crypto import KEY_ENV_VAR as RAW_ZONE_KEY_ENV_VAR  # noqa: E402
from radplan.settings import lake_dir, landing_dir  # noqa: E402
from radplan_assets import ASSET_MODULES  # noqa: E402
from radplan_resources.s3_lake import s3_lake_from_env  # noqa: E402
from sensors import ALL_SENSORS  # noqa: E402


def build_resources() -> dict:
    """Embedded defaults under RADPLAN_HOME; each production service is switched on by one environment variable."""
    lake = lake_dir()
    orthanc_url = os.environ.get("RADPLAN_ORTHANC_URL")
    pacs = (
        OrthancPacs(
            url=orthanc_url,
            username=os.environ.get("RADPLAN_ORTHANC_USER"),
            # An EnvVar, not its value: Dagster resolves it at run time and shows only the variable's name.
            password=EnvVar("RADPLAN_ORTHANC_PASSWORD") if os.environ.get("RADPLAN_ORTHANC_PASSWORD") else None,
        )
        if orthanc_url
        else LandingFolderPacs(folder=str(landing_dir() / "dicom"))
    )
    models = lake / "models"
    deid_key = DeidKeyResource(demo=demo_mode())
    # Start-up refuses a missing or short de-identification key outside demo mode (the message never holds the key).
    deid_key.validate()
    # Raw-zone encryption is on exactly when a key is configured; the key itself is read at use, not stored here.
    lake_options = {"raw_zone_encryption": bool(os.environ.get(RAW_ZONE_KEY_ENV_VAR, "").strip())}
    return {
        # RADPLAN_LAKE_S3_BUCKET: the lake lives in S3 (this folder is its working copy); else the local folder.
        "lake": s3_lake_from_env(str(lake), **lake_options) or LakeResource(root=str(lake), **lake_options),
        "landing": LandingZoneResource(folder=str(landing_dir())),
        "pacs": pacs,
        "deid_key": deid_key,
        "mlflow": MlflowResource(
            tracking_uri=os.environ.get("RADPLAN_MLFLOW_TRACKING_URI", f"sqlite:///{models / 'mlflow.db'}"),
            artifact_root=os.environ.get("RADPLAN_MLFLOW_ARTIFACT_ROOT", str(models / "artifacts")),
        ),
        "spark": SparkResource(master=os.environ.get("RADPLAN_SPARK_MASTER", "local[*]")),
    }


defs = Definitions(
    assets=load_assets_from_modules(ASSET_MODULES),
    asset_checks=load_asset_checks_from_modules(ASSET_MODULES),
    jobs=ALL_JOBS,
    schedules=ALL_SCHEDULES,
    sensors=ALL_SENSORS,
    resources=build_resources(),
)

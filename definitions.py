"""The one Dagster Definitions object: every asset, check, job, schedule, sensor and resource.

This is the top of the orchestration layer (`workspace.yaml` and `[tool.dagster]` load it). Settings are read
here once, from the environment (``radplan.settings``), and handed down as resources; the assets below receive
their upstream tables as parameters through the lake IO manager.

    definitions.py  →  radplan_assets, radplan_resources, jobs, sensors  (Dagster)
                    →  radplan/  (the science library: no Dagster)
"""

from __future__ import annotations

from dagster import Definitions, EnvVar, in_process_executor, load_asset_checks_from_modules, load_assets_from_modules

from radplan.settings import ORTHANC_PASSWORD_ENV_VAR, Settings, disable_telemetry, name_a_bare_main_module
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
name_a_bare_main_module()  # a run worker's __main__ is bare: named before any library looks at it (radplan.quality)
SETTINGS = Settings.from_env()
# The key is checked once, here, before the asset modules (torch, MONAI, Spark) are imported: a misconfigured
# start-up fails in about two seconds instead of after the whole import (the message never shows the key).
DeidKeyResource(demo=SETTINGS.demo).validate()

from jobs import ALL_JOBS, ALL_SCHEDULES  # noqa: E402
from radplan_assets import ASSET_MODULES  # noqa: E402
from radplan_resources.io_manager import LakeIOManager  # noqa: E402
from sensors import ALL_SENSORS  # noqa: E402


def build_resources(settings: Settings | None = None) -> dict:
    """Embedded defaults under RADPLAN_HOME; each production service is switched on by one environment variable."""
    settings = settings or Settings.from_env()
    lake_root = str(settings.lake_dir)
    pacs = (
        OrthancPacs(
            url=settings.orthanc_url,
            username=settings.orthanc_user,
            # An EnvVar, not its value: Dagster resolves it at run time and shows only the variable's name.
            password=EnvVar(ORTHANC_PASSWORD_ENV_VAR) if settings.orthanc_password_set else None,
        )
        if settings.orthanc_url
        else LandingFolderPacs(folder=str(settings.landing_dir / "dicom"))
    )
    # Raw-zone encryption is on exactly when a key is configured; the key itself is read at use, not stored here.
    lake_options = {"raw_zone_encryption": settings.raw_zone_encryption}
    # RADPLAN_LAKE_S3_BUCKET: the lake lives in S3 (the local folder is its working copy); else the local folder.
    if settings.s3_lake is not None:
        # Imported here: dagster-aws costs every run process about a second of import where the lake is local.
        from radplan_resources.s3_lake import s3_lake_from_settings

        lake = s3_lake_from_settings(lake_root, settings.s3_lake, **lake_options)
    else:
        lake = LakeResource(root=lake_root, **lake_options)
    return {
        "lake": lake,
        # Tables returned by assets go to the same lake, and come back as downstream assets' parameters.
        "io_manager": LakeIOManager(lake=lake),
        "landing": LandingZoneResource(folder=str(settings.landing_dir)),
        "pacs": pacs,
        "deid_key": DeidKeyResource(demo=settings.demo),
        "mlflow": MlflowResource(tracking_uri=settings.mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root),
        "spark": SparkResource(
            master=settings.spark_master,
            driver_host=settings.spark_driver_host,
            driver_bind_address=settings.spark_driver_bind_address,
        ),
    }


defs = Definitions(
    assets=load_assets_from_modules(ASSET_MODULES),
    asset_checks=load_asset_checks_from_modules(ASSET_MODULES),
    jobs=ALL_JOBS,
    schedules=ALL_SCHEDULES,
    sensors=ALL_SENSORS,
    resources=build_resources(SETTINGS),
    # Every step of a run in the run's own process. Dagster's default (a subprocess per step) imports the code
    # location again for each step (2-3 s; the asset modules import torch, MONAI, Presidio/spaCy and MLflow inside the
    # assets that use them, so a step that needs them pays ~8 s more each time), several times per patient refresh;
    # per-patient runs already spread over processes (the run queue, the demo's workers).
    executor=in_process_executor,
)

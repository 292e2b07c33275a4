"""Every setting radplan reads from its environment, in one place.

This is the only module that reads (or sets) process environment variables. The Dagster layer builds one
``Settings`` at the top (``definitions.py``) and hands its values down as resources; the science library
takes what it needs as parameters. Secrets (the de-identification key, the raw-zone key, the Orthanc
password) are read where they are used, through the functions below, and are never part of a
``Settings`` object, resource config, metadata or a log line.

| variable | default | meaning |
| --- | --- | --- |
| RADPLAN_HOME | nearest .radplan in the working directory or a parent, else ./.radplan | data home: landing/, lake/, dagster_home/ |
| RADPLAN_DEMO | off | demo mode: the built-in de-identification key, synthetic data only |
| RADPLAN_DEID_KEY | (required outside demo mode) | de-identification key, >= 32 bytes |
| RADPLAN_RAW_ZONE_KEY | unset | 32-byte key: raw zone encrypted at rest |
| RADPLAN_ORTHANC_URL, _USER, _PASSWORD | unset | the PACS is Orthanc's REST API (else the landing folder) |
| RADPLAN_MLFLOW_TRACKING_URI, RADPLAN_MLFLOW_ARTIFACT_ROOT | sqlite + folder in lake/models | MLflow |
| RADPLAN_SPARK_MASTER, RADPLAN_SPARK_DRIVER_HOST, RADPLAN_SPARK_DRIVER_BIND_ADDRESS | local[*], 127.0.0.1 | Spark |
| RADPLAN_LAKE_S3_BUCKET (+ _PREFIX), RADPLAN_S3_ENDPOINT_URL, RADPLAN_S3_SSE, RADPLAN_S3_KMS_KEY_ID, RADPLAN_S3_MAX_ATTEMPTS, AWS_REGION | unset | lake on S3 |
| RADPLAN_PACS_RETRY_DELAY_S | 5 | base delay of the PACS step retry policy |
| RADPLAN_COHORT_BATCH_QUIET_S | 600 | quiet seconds before the cohort batch sensor rebuilds the cohort |
| RADPLAN_DAGSTER_PG_URL or RADPLAN_DAGSTER_PG_HOST/_PORT/_DB/_USER/_PASSWORD | unset | Postgres Dagster instance |
| DAGSTER_HOME | RADPLAN_HOME/dagster_home | the Dagster instance folder |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

HOME_ENV_VAR = "RADPLAN_HOME"
DEMO_ENV_VAR = "RADPLAN_DEMO"
DEID_KEY_ENV_VAR = "RADPLAN_DEID_KEY"
RAW_ZONE_KEY_ENV_VAR = "RADPLAN_RAW_ZONE_KEY"
ORTHANC_PASSWORD_ENV_VAR = "RADPLAN_ORTHANC_PASSWORD"
DAGSTER_HOME_ENV_VAR = "DAGSTER_HOME"

# Every library we ship that has telemetry or usage analytics, switched off.
TELEMETRY_OFF = {
    "DAGSTER_DISABLE_TELEMETRY": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "SPACY_DISABLE_TELEMETRY": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
}


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes"}


@dataclass(frozen=True)
class S3LakeSettings:
    bucket: str
    prefix: str
    endpoint_url: str | None
    region_name: str | None
    server_side_encryption: str
    kms_key_id: str | None
    max_attempts: int


@dataclass(frozen=True)
class Settings:
    """radplan's configuration as read from the environment (no secrets: those are read at use)."""

    home: Path
    demo: bool
    orthanc_url: str | None
    orthanc_user: str | None
    orthanc_password_set: bool
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    spark_master: str
    spark_driver_host: str
    spark_driver_bind_address: str
    s3_lake: S3LakeSettings | None
    raw_zone_encryption: bool
    pacs_retry_delay_s: float
    cohort_batch_quiet_s: float
    # Minimum seconds between ticks of the sensors on a new study's path (PACS -> patient refresh -> export).
    # dagster-daemon evaluates sensors once per 5-second loop: 1 means every loop.
    sensor_interval_s: int

    @property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @property
    def lake_dir(self) -> Path:
        return self.home / "lake"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = _environ(environ)
        home = radplan_home(env)
        models = home / "lake" / "models"
        kms_key_id = env.get("RADPLAN_S3_KMS_KEY_ID") or None
        bucket = env.get("RADPLAN_LAKE_S3_BUCKET")
        s3 = (
            S3LakeSettings(
                bucket=bucket,
                prefix=env.get("RADPLAN_LAKE_S3_PREFIX", "radplan"),
                endpoint_url=env.get("RADPLAN_S3_ENDPOINT_URL") or None,
                region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
                server_side_encryption=env.get("RADPLAN_S3_SSE") or ("aws:kms" if kms_key_id else "AES256"),
                kms_key_id=kms_key_id,
                max_attempts=int(env.get("RADPLAN_S3_MAX_ATTEMPTS", "5")),
            )
            if bucket
            else None
        )
        return cls(
            home=home,
            demo=_truthy(env.get(DEMO_ENV_VAR)),
            orthanc_url=env.get("RADPLAN_ORTHANC_URL") or None,
            orthanc_user=env.get("RADPLAN_ORTHANC_USER") or None,
            orthanc_password_set=bool(env.get(ORTHANC_PASSWORD_ENV_VAR)),
            mlflow_tracking_uri=env.get("RADPLAN_MLFLOW_TRACKING_URI", f"sqlite:///{models / 'mlflow.db'}"),
            mlflow_artifact_root=env.get("RADPLAN_MLFLOW_ARTIFACT_ROOT", str(models / "artifacts")),
            spark_master=env.get("RADPLAN_SPARK_MASTER", "local[*]"),
            spark_driver_host=env.get("RADPLAN_SPARK_DRIVER_HOST") or "127.0.0.1",
            spark_driver_bind_address=env.get("RADPLAN_SPARK_DRIVER_BIND_ADDRESS") or "127.0.0.1",
            s3_lake=s3,
            raw_zone_encryption=bool(env.get(RAW_ZONE_KEY_ENV_VAR, "").strip()),
            pacs_retry_delay_s=float(env.get("RADPLAN_PACS_RETRY_DELAY_S", "5")),
            cohort_batch_quiet_s=float(env.get("RADPLAN_COHORT_BATCH_QUIET_S", "600")),
            sensor_interval_s=int(env.get("RADPLAN_SENSOR_INTERVAL_S", "1")),
        )


# --- paths ------------------------------------------------------------------------------------------------


def radplan_home(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path:
    """RADPLAN_HOME; else the nearest ``.radplan`` folder in the working directory or one of its parents, so
    that a notebook started in ``notebooks/`` (or a command run in any subfolder of the clone) reads the
    clone's data; else ``./.radplan`` (where a first ``radplan demo`` creates it)."""
    configured = _environ(environ).get(HOME_ENV_VAR)
    if configured:
        return Path(configured).resolve()
    start = (cwd or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / ".radplan").is_dir():
            return (folder / ".radplan").resolve()
    return start / ".radplan"


def landing_dir(home: Path | None = None) -> Path:
    return (home or radplan_home()) / "landing"


def lake_dir(home: Path | None = None) -> Path:
    return (home or radplan_home()) / "lake"


def dagster_home(home: Path | None = None) -> Path:
    return (home or radplan_home()) / "dagster_home"


def configured_dagster_home() -> Path | None:
    """DAGSTER_HOME when the environment sets it."""
    value = os.environ.get(DAGSTER_HOME_ENV_VAR)
    return Path(value) if value else None


# --- secrets: read at use, never stored -------------------------------------------------------------------


def demo_mode() -> bool:
    return _truthy(os.environ.get(DEMO_ENV_VAR))


def deid_key_text() -> str:
    """RADPLAN_DEID_KEY as set ("" when unset); radplan.pseudonym.load_key validates it."""
    return os.environ.get(DEID_KEY_ENV_VAR, "")


def raw_zone_key_text(environ: Mapping[str, str] | None = None) -> str:
    """RADPLAN_RAW_ZONE_KEY as set ("" when unset); radplan.crypto.parse_key validates it."""
    return _environ(environ).get(RAW_ZONE_KEY_ENV_VAR, "")


# --- switches this process applies to itself and its children ----------------------------------------------


def disable_telemetry() -> None:
    """Every entry point calls this first: no usage telemetry from any library, Spark's driver on loopback."""
    for name, value in TELEMETRY_OFF.items():
        os.environ[name] = value
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def name_a_bare_main_module() -> None:
    """Give a spawned process's bare ``__main__`` (no spec, no file: ``python -c`` from multiprocessing's spawn, as
    Dagster's code server starts every run worker) the spec name ``__main__``.

    pyspark's Spark Connect check takes such a ``__main__`` for a doctest run and calls ``sys.exit(0)`` while Great
    Expectations imports it: every data-quality check of a daemon-launched run failed with ``SystemExit: 0``. A
    child spawned from here re-imports nothing for a main named ``__main__`` (multiprocessing skips it)."""
    import importlib.machinery
    import sys

    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__spec__", None) is None and not hasattr(main, "__file__") and not hasattr(sys, "ps1"):
        main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)


def leave_library_logging_to_the_application() -> None:
    """MLflow installs its own INFO-level console handler on import unless told not to; then its records reach
    the command's console handler and its levels like every other library's (radplan_cli.logs)."""
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")


def use_home(home: Path | str) -> Path:
    """Point this process (and the processes it starts) at another data home."""
    resolved = Path(home).resolve()
    os.environ[HOME_ENV_VAR] = str(resolved)
    return resolved


def enable_demo_mode() -> None:
    os.environ[DEMO_ENV_VAR] = "1"


def use_dagster_home(folder: Path) -> None:
    os.environ[DAGSTER_HOME_ENV_VAR] = str(folder)


def variables_with_prefix(*prefixes: str) -> dict[str, str]:
    """The environment variables whose names start with one of ``prefixes`` (a client's own settings block)."""
    return {name: value for name, value in os.environ.items() if name.startswith(prefixes)}


def process_environment() -> Mapping[str, str]:
    """The environment as a read-only mapping, for code that derives configuration files from it (dagster.yaml)."""
    return dict(os.environ)


def never_fetch_cram_references() -> None:
    """htslib fetches CRAM reference sequences over the network unless REF_PATH points nowhere."""
    os.environ.setdefault("REF_PATH", ":")


def spark_local_ip(bind_address: str) -> None:
    os.environ.setdefault("SPARK_LOCAL_IP", bind_address)


def federated_engine_environment(poc_workspace: Path, code_root: Path) -> None:
    """Environment of the NVIDIA FLARE processes this process starts (they inherit it): the POC workspace
    FLARE provisions into, ``code_root`` on PYTHONPATH so its server and clients import radplan, telemetry off."""
    disable_telemetry()
    os.environ["NVFLARE_POC_WORKSPACE"] = str(poc_workspace)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(code_root) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(code_root), *paths])

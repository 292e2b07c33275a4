"""Process-wide settings every entry point applies first: no telemetry, loopback Spark."""

from __future__ import annotations

import os

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
}


def disable_telemetry() -> None:
    for name, value in TELEMETRY_OFF.items():
        os.environ[name] = value
    # Spark binds its driver to loopback; nothing listens on other interfaces.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

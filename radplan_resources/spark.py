"""Spark sessions: local[*] by default, any master URL by configuration, same code.

The driver binds loopback unless told otherwise; with a standalone or Kubernetes master on other machines set the
driver host (the address executors call back) and bind address (RADPLAN_SPARK_DRIVER_HOST / _BIND_ADDRESS).
"""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from radplan.settings import spark_local_ip


class SparkResource(ConfigurableResource):
    master: str = Field(default="local[*]", description="Spark master URL: local[*], spark://host:7077, k8s://...")
    app_name: str = "radplan"
    driver_memory: str = "2g"
    shuffle_partitions: int = Field(default=4, description="Small default: cohorts are thousands of rows, not billions")
    driver_host: str | None = Field(
        default=None,
        description="Address executors use to reach the driver (None: 127.0.0.1; definitions.py sets it from RADPLAN_SPARK_DRIVER_HOST). "
        "A master on another machine needs the driver's routable address, e.g. the pod IP.",
    )
    driver_bind_address: str | None = Field(
        default=None, description="Interface the driver listens on (None: 127.0.0.1; definitions.py sets it from RADPLAN_SPARK_DRIVER_BIND_ADDRESS)"
    )

    def session(self):
        from pyspark.sql import SparkSession

        host = self.driver_host or "127.0.0.1"
        bind = self.driver_bind_address or "127.0.0.1"
        spark_local_ip(bind)
        return (
            SparkSession.builder.master(self.master)
            .appName(self.app_name)
            .config("spark.driver.memory", self.driver_memory)
            .config("spark.driver.host", host)
            .config("spark.driver.bindAddress", bind)
            .config("spark.ui.enabled", "false")
            # Spark draws "[Stage n:>  (k + m) / t]" bars on stderr even into a file or a pipe; radplan's own show progress.
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", str(self.shuffle_partitions))
            .config("spark.sql.session.timeZone", "UTC")
            .getOrCreate()
        )

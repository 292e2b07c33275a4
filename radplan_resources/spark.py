"""Spark sessions: local[*] by default, any master URL by configuration, same code."""

from __future__ import annotations

import os

from dagster import ConfigurableResource
from pydantic import Field


class SparkResource(ConfigurableResource):
    master: str = Field(default="local[*]", description="Spark master URL: local[*], spark://host:7077, k8s://...")
    app_name: str = "radplan"
    driver_memory: str = "2g"
    shuffle_partitions: int = Field(default=4, description="Small default: cohorts are thousands of rows, not billions")

    def session(self):
        from pyspark.sql import SparkSession

        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        return (
            SparkSession.builder.master(self.master)
            .appName(self.app_name)
            .config("spark.driver.memory", self.driver_memory)
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", str(self.shuffle_partitions))
            .config("spark.sql.session.timeZone", "UTC")
            .getOrCreate()
        )

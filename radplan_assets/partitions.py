"""One dynamic partitions definition for every per-patient asset, keyed by pseudonymous patient key."""

from dagster import DynamicPartitionsDefinition

PATIENTS_PARTITION_NAME = "patients"
patient_partitions = DynamicPartitionsDefinition(name=PATIENTS_PARTITION_NAME)

"""Sensors: arrivals trigger intake (and the SEG/RTSTRUCT back to the PACS), changed patients get their partitions rerun, cohort level in batches, failures recorded, missed run retries made up."""

from sensors.failures import run_failure_recorder
from sensors.landing import ehr_landing_sensor, genomics_landing_sensor, pacs_study_sensor
from sensors.pacs_return import pacs_segmentation_sensor
from sensors.patients import cohort_batch_sensor, patient_export_sensor, patient_refresh_sensor
from sensors.retraining import retraining_sensor
from sensors.retries import missed_retry_sensor

ALL_SENSORS = [
    pacs_study_sensor,
    pacs_segmentation_sensor,
    genomics_landing_sensor,
    ehr_landing_sensor,
    patient_refresh_sensor,
    patient_export_sensor,
    cohort_batch_sensor,
    run_failure_recorder,
    missed_retry_sensor,
    retraining_sensor,
]

"""Sensors: new data in the landing zone triggers intake."""

from sensors.landing import landing_sensor
from sensors.retraining import retraining_sensor

ALL_SENSORS = [landing_sensor, retraining_sensor]

"""The shared demo cohort the slow tests read (the ``demo_home`` fixture in tests/conftest.py builds it)."""

DEMO_PATIENTS = 12  # enough outcomes of each class for the response model to train
DEMO_SEED = 11

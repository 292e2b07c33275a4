"""radplan's clinician- and engineer-facing layer: a cohort dashboard with sign-in and roles, and a CDS Hooks service.

A client of the lake: it reads the lake's files and uses radplan's science modules, never Dagster,
the asset modules, jobs or sensors. Start it with ``make dashboard`` or ``python -m radplan_dashboard serve``.
"""

"""Data-quality validation with Great Expectations 1.x (ephemeral context, pandas batches).

Asset checks describe their expectations as plain tuples; this module turns them
into GX expectations, validates a DataFrame and returns a PHI-free summary
(expectation, column, unexpected count), never the unexpected values themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import pandas as pd

from radplan.settings import name_a_bare_main_module


def _great_expectations():
    """Import Great Expectations, which imports pyspark's Spark Connect modules. In a process whose ``__main__`` is
    bare (``python -c``, a pytest-xdist worker, a spawned worker) pyspark then calls ``sys.exit(0)``: the import
    ends the calling step with ``SystemExit: 0``. Naming ``__main__`` first prevents that."""
    name_a_bare_main_module()
    import great_expectations

    return great_expectations


@dataclass(frozen=True)
class ValidationSummary:
    success: bool
    evaluated: int
    failures: list[dict] = field(default_factory=list)


@lru_cache(maxsize=1)
def _batch_definition():
    gx = _great_expectations()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("radplan").add_dataframe_asset("frame")
    return asset.add_batch_definition_whole_dataframe("whole")


def expectation(kind: str, **kwargs):
    """Build one GX expectation by its snake_case name, e.g. expectation("expect_column_values_to_not_be_null", column="x")."""
    gxe = _great_expectations().expectations

    class_name = "".join(part.capitalize() for part in kind.split("_"))
    return getattr(gxe, class_name)(**kwargs)


def validate_frame(frame: pd.DataFrame, expectations: list) -> ValidationSummary:
    gx = _great_expectations()
    batch_definition = _batch_definition()  # creates the context the suite needs
    suite = gx.ExpectationSuite(name="radplan-check")
    for item in expectations:
        suite.add_expectation(item)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite)
    failures = [
        {
            "expectation": r.expectation_config.type,
            "column": r.expectation_config.kwargs.get("column"),
            "unexpected_count": (r.result or {}).get("unexpected_count"),
        }
        for r in result.results
        if not r.success
    ]
    return ValidationSummary(success=bool(result.success), evaluated=len(result.results), failures=failures)

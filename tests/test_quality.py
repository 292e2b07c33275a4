"""Data-quality validation (radplan.quality) with Great Expectations, in the processes that run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Run as `python -c`: __main__ has no spec and no file, as in a pytest-xdist worker, a multiprocessing spawn child
# and Dagster's run workers. Importing Great Expectations there made pyspark call sys.exit(0): no output, exit 0.
VALIDATE_IN_A_BARE_MAIN = """
import json
import pandas as pd
from radplan.quality import expectation, validate_frame
summary = validate_frame(pd.DataFrame({"x": [1, None, 3]}), [expectation("expect_column_values_to_not_be_null", column="x")])
print(json.dumps({"success": summary.success, "evaluated": summary.evaluated, "failures": summary.failures}))
"""


def test_validation_runs_in_a_process_whose_main_module_is_bare():
    result = subprocess.run([sys.executable, "-c", VALIDATE_IN_A_BARE_MAIN], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"the validation printed nothing (stderr: {result.stderr[-2000:]})"
    summary = json.loads(lines[-1])
    # The null is found and counted, without the value itself.
    assert summary == {"success": False, "evaluated": 1,
                       "failures": [{"expectation": "expect_column_values_to_not_be_null", "column": "x", "unexpected_count": 1}]}

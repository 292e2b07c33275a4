"""Lake integrity as an asset check, run daily by ``daily_lake_verify`` (job ``lake_verify_job``).

The check re-reads the whole lake (the bucket with the S3 lake) against the manifests its writes recorded, the
same code as ``radplan lake verify``. It hangs on ``landing_inventory``, the asset every lake dataset descends
from; ``ingest_job`` leaves it out (``without_checks``) so an intake never pays for hashing the lake.
"""

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from radplan_resources import LakeResource

# Damaged datasets named in the check's metadata (zone/table/pseudonymous key only; never file names).
MAX_DATASETS_LISTED = 50


@asset_check(
    asset="landing_inventory",
    name="lake_integrity",
    blocking=False,
    description="Every table, patient partition and patient folder in the lake (the bucket with the S3 lake) still "
    "matches the content manifest recorded when it was written: nothing missing, truncated or altered.",
)
def lake_integrity(context: AssetCheckExecutionContext, lake: LakeResource) -> AssetCheckResult:
    report = lake.verify_integrity()
    damaged = report.damaged_datasets()
    context.log.info(f"{report.datasets_checked} datasets checked, {len(damaged)} damaged")
    return AssetCheckResult(
        passed=report.ok,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "datasets_checked": report.datasets_checked,
            "files_hashed": report.files_hashed,
            "bytes_hashed": report.bytes_hashed,
            "problems": MetadataValue.json(report.counts()),
            "damaged_datasets": MetadataValue.json(damaged[:MAX_DATASETS_LISTED]),
            "damaged_datasets_total": len(damaged),
            "unrecorded_files": sum(report.unrecorded.values()),
            # Files but no manifest at all: nothing could be verified, which is not a pass.
            "indeterminate": report.indeterminate,
        },
    )

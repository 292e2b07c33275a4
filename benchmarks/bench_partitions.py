"""Partition scale: the "patients" dynamic partitions on a sqlite Dagster instance at 1k, 10k and 40k keys.

One temporary sqlite instance grows step by step (keys added in batches of 1000, like an intake
that registers many new patients). At each step it times adding the keys, listing them
(``get_dynamic_partitions``), membership (``has_dynamic_partition``), a partitioned asset's
status queries (``get_materialized_partitions``, ``get_status_by_partition`` over every key,
with one materialization recorded for each of the first ``MATERIALIZED`` keys), and one tick of every
sensor in ``sensors.ALL_SENSORS`` but the run-status ones, which have no tick (``build_sensor_context``
with the Definitions' resources, on an empty landing zone). The last step (40k) is past where sqlite has been reported to fail (~36k dynamic
partitions); a failure is recorded with its error class, not raised.

Writes benchmarks/results/partitions.json (``partition_scale``: sensor tick seconds at 10k).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import QUICK, result_row, write_results

BATCH = 1000
MATERIALIZED = 200  # each is one sqlite write: enough for the status queries to read events


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tick_all(instance, sensors, resources, definitions) -> dict[str, float | str]:
    """Seconds per sensor for one evaluation (or 'ErrorClass: message' when the tick raises)."""
    from dagster import build_sensor_context

    ticks: dict[str, float | str] = {}
    for sensor_def in sensors:
        context = build_sensor_context(instance=instance, resources=resources, definitions=definitions)
        start = time.perf_counter()
        try:
            sensor_def(context)
        except Exception as exc:  # noqa: BLE001 - a failing tick is a result here
            ticks[sensor_def.name] = f"{type(exc).__name__}: {str(exc)[:200]}"
            continue
        ticks[sensor_def.name] = round(time.perf_counter() - start, 4)
    return ticks


def measure(steps: list[int], materialized: int, repeats: int, single_batch: int) -> list[dict]:
    import logging

    from dagster import AssetKey, AssetMaterialization, DagsterInstance, RunStatusSensorDefinition

    from definitions import defs
    from radplan_assets.partitions import PATIENTS_PARTITION_NAME, patient_partitions
    from sensors import ALL_SENSORS

    logging.getLogger("dagster").setLevel(logging.WARNING)  # the sensors' per-tick INFO lines
    # Run-status sensors react to run events and have no tick to time.
    ticking = [s for s in ALL_SENSORS if not isinstance(s, RunStatusSensorDefinition)]
    resources = defs.resources
    asset_key = AssetKey("radiomic_features")
    measurements: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="radplan-bench-partitions-") as home:
        instance = DagsterInstance.local_temp(home)
        _tick_all(instance, ticking, resources, defs)  # warm-up: imports, resource setup
        have = recorded = 0
        for target in steps:
            row: dict = {"partitions": target}
            try:
                start = time.perf_counter()
                while have < target:
                    size = min(BATCH, target - have)
                    instance.add_dynamic_partitions(PATIENTS_PARTITION_NAME, [f"p{i:016x}" for i in range(have, have + size)])
                    have += size
                row["add_seconds"] = round(time.perf_counter() - start, 3)
                while recorded < min(materialized, have):
                    instance.report_runless_asset_event(AssetMaterialization(asset_key, partition=f"p{recorded:016x}"))
                    recorded += 1
                row["materialized_partitions"] = recorded
                keys = instance.get_dynamic_partitions(PATIENTS_PARTITION_NAME)
                row["stored_keys"] = len(keys)
                row["get_dynamic_partitions_s"] = round(_median_seconds(
                    lambda: instance.get_dynamic_partitions(PATIENTS_PARTITION_NAME), repeats), 4)
                probe = [f"p{i:016x}" for i in range(0, have, max(1, have // 50))]
                start = time.perf_counter()
                for key in probe:
                    instance.has_dynamic_partition(PATIENTS_PARTITION_NAME, key)
                row["has_dynamic_partition_ms"] = round((time.perf_counter() - start) / len(probe) * 1000, 3)
                row["get_materialized_partitions_s"] = round(_median_seconds(
                    lambda: instance.get_materialized_partitions(asset_key), repeats), 4)
                row["get_status_by_partition_s"] = round(_median_seconds(
                    lambda: instance.get_status_by_partition(asset_key, keys, patient_partitions), repeats), 4)
                per_sensor = [_tick_all(instance, ticking, resources, defs) for _ in range(repeats)]
                row["sensor_ticks_s"] = {
                    name: (statistics.median(t[name] for t in per_sensor)
                           if all(isinstance(t[name], float) for t in per_sensor) else per_sensor[-1][name])
                    for name in per_sensor[0]}
                row["sensor_tick_total_s"] = round(sum(v for v in row["sensor_ticks_s"].values() if isinstance(v, float)), 4)
                row["ok"] = all(isinstance(v, float) for v in row["sensor_ticks_s"].values())
            except Exception as exc:  # noqa: BLE001 - sqlite giving up at some size is the finding
                row.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:300]}")
                measurements.append(row)
                break
            measurements.append(row)
            print(row, flush=True)
        if single_batch:
            measurements.append(_single_call_probe(instance, single_batch))
    return measurements


def _single_call_probe(instance, count: int) -> dict:
    """Add ``count`` keys in ONE call to a separate partitions definition: the failure reported at ~36k
    (dagster-io/dagster#16260) comes from one SQL ``IN`` list over every new key, past sqlite's
    32766-variable limit; radplan's intake adds keys in batches of at most 1000."""
    row: dict = {"partitions": count, "single_call_probe": True}
    start = time.perf_counter()
    try:
        instance.add_dynamic_partitions("single_call_probe", [f"q{i:016x}" for i in range(count)])
        row.update(ok=True, add_seconds=round(time.perf_counter() - start, 3))
    except Exception as exc:  # noqa: BLE001 - the failure is the finding
        row.update(ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="100,1000,2000" if QUICK else "1000,10000,40000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single-call-probe", type=int, default=0 if QUICK else 40_000,
                        help="keys added in one call at the end (0: skip)")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]

    with tempfile.TemporaryDirectory(prefix="radplan-bench-home-") as radplan_home:
        # Resources (landing zone, lake) point at an empty home: the tick measures Dagster storage, not file scans.
        os.environ["RADPLAN_HOME"] = radplan_home
        os.environ["RADPLAN_DEMO"] = "1"
        Path(radplan_home, "landing").mkdir()
        measurements = measure(steps, MATERIALIZED, args.repeats, args.single_call_probe)
    by_size = {m["partitions"]: m for m in measurements if not m.get("single_call_probe")}
    small, large = steps[0], steps[1]
    tick_small = by_size.get(small, {}).get("sensor_tick_total_s")
    tick_large = by_size.get(large, {}).get("sensor_tick_total_s")
    ratio = round(tick_large / tick_small, 2) if tick_small and tick_large else None
    results = [result_row(
        "partition_scale", radplan=tick_large, peer=tick_small, unit="s", ratio=ratio, runs=args.repeats,
        lower_is_better=True, peer_tool=f"the same sensors at {small} partitions (radplan column: {large})",
        note="sum over sensors.ALL_SENSORS of one tick's wall time on a sqlite instance (median of runs); "
             "ratio = tick at the larger size / tick at the smaller",
        steps=measurements)]
    write_results("partitions.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

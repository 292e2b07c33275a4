"""Render docs/benchmarks.md from benchmarks/results/*.json, so the page always shows the last run's figures.

    python benchmarks/render_docs.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from _common import REPO, RESULTS_DIR

DOC = REPO / "docs" / "benchmarks.md"
# Result files in the order the page shows them; others found in results/ follow.
ORDER = ("deid.json", "vcf.json", "radiomics.json", "memory.json", "e2e.json", "partitions.json", "scale.json",
         "cohort_read.json", "incremental.json", "sensor_latency.json")
# One flat object of named figures written by several benchmarks (scale.*, daemon.*): a table of its own, not rows.
OPERATIONS = "operations.json"
DEMO_ORDER = ("ingest_job", "patient_preparation_job", "segmentation_training_job", "patient_features_job", "cohort_job",
              "recommendation_job", "export_job", "monitoring_job")  # jobs.DEMO_STAGES, without importing Dagster here
TARGET = re.compile(r"^\s*(>=|<=)\s*(-?[0-9.]+)")

INTRO = """\
# Benchmarks

`make bench` runs `benchmarks/run_all.py`: each benchmark compares radplan with what a user would use
instead, on the same input in the same run, and writes one JSON object per comparison (`name`, `radplan`,
`peer`, `unit`, `ratio`, `runs`, `machine`, `date`, plus details) to `benchmarks/results/`. This page is
generated from those files by `benchmarks/render_docs.py`; do not edit it by hand.
"""

METHODS = """\
## What is measured

* **De-identification** (`bench_deid.py`): the 131 CT instances of the shared IBSI STS sample, pre-loaded
  as bytes, processed 4 times per run by radplan (`deidentify_dataset` + write), dicognito (`Anonymizer` +
  write) and bare pydicom (read + write, no change: the floor). Engines interleave in every run, pinned to
  one core; rate = instances per second of process CPU time; median of runs.
* **VCF → Parquet** (`bench_vcf.py`): a generated 4-sample GRCh38 VCF of 1M records (SNVs with a real
  Ti/Tv mix, indels, multi-allelic sites, INFO DP/AF, VEP CSQ on ~10%, FORMAT GT:AD:DP:GQ); in one run,
  interleaved: radplan's `vcf_to_parquet` (one row per allele x sample, annotation picked, zstd Parquet) vs
  oxbow (Rust/noodles → Arrow) writing the fixed columns, INFO CSQ and FORMAT GT/AD/DP of every sample to
  zstd Parquet, and vs `bcftools query` printing the same fields as text; wall time in child processes
  (interpreter start excluded), median of runs; ratio = peer seconds / radplan seconds. Peak memory:
  radplan on 1M vs 250k records in fresh processes.
* **Radiomics** (`bench_radiomics.py`): every study of the first 12 demo patients (seed 7; 19 series, 42
  lesions) rendered from the demo's phantom, normalized to 1.5 mm and written as NIfTI like the lake. Overhead:
  bare pyradiomics (`execute` per label, per series) vs the `radiomic_features` asset's body
  (`extract_series_features` on the files, settings record, Parquet write) on 1 worker, first 3 patients.
  Speed-up: that body on 2 workers vs 1, all 12 patients (the process's worker pool started once before
  the timed runs; its cold start is recorded apart; tables checked bit-identical). Wall time and CPU seconds
  of the process tree, median of interleaved runs.
* **Peak memory, 512 × 512 × 300 CT** (`bench_memory.py`): the per-study chain de-id → volume →
  normalize/resample → radiomics (2 workers) in a child process; summed RSS of its process tree, sampled.
* **End to end** (`bench_e2e.py`): `radplan demo` on fresh synthetic cohorts. Per-patient cost = the
  per-patient stages' wall seconds / patients (2 worker processes); cohort-level stages are listed apart.
  The segmentation model trains 1 epoch (a fixed cost, unrelated to scaling).
* **Lesion segmentation** (`bench_segmentation.py`): synthetic CT studies from the generator (`radplan.synth`
  phantom and lesions, normalised to 1.5 mm by the pipeline's functions); training patients and held-out
  patients are disjoint. `train_segmentation` with the CPU default recipe on 2 torch threads until a budget
  of 15 minutes x 2 cores of process CPU time (what a dedicated 2-core machine gives; wall time is also
  capped). Held-out Dice and HD95 (MONAI) of post-processed whole-image predictions, and per lesion
  (predicted voxels attributed to the nearest true lesion) grouped by the generator's lesion site (`lung`,
  `soft_tissue`); 95% CIs by bootstrap over patients.
* **One patient's EHR read as the cohort grows** (`bench_ehr_scope.py`): the real Synthea CSV and FHIR bulk
  samples (27 + 6 patients) written 1, 10 and 50 times over with every patient id rewritten (33 to 1,650 patients). One CSV and one
  FHIR patient of the first copy read as `ehr_extracts` reads them (`PatientScope`: the other registered
  patients' lines skipped before typing and validation) vs validating the whole extract and keeping the
  patient's rows (the read before); both must find the same records; same process after a warm-up read,
  median of 3. Also the EHR part of an intake when the EHR folders did not change (a new study or VCF): the
  landing token only, the previous EHR patients kept, vs re-reading and re-validating every row as before.
* **The intake's PACS listing** (`bench_pacs_listing.py`): a real Orthanc on loopback filled with 100, 400 and
  1,600 single-instance studies (one real CT instance, new UIDs). Once they are stable, one more study arrives.
  The listing a change-feed intake makes (`list_studies(known=...)` with the previous listing) is compared with
  a full listing (every study's series and instances read, as every intake did before). Both must give the
  same studies and fingerprints; median of 3.
* **Partition scale** (`bench_partitions.py`): a temporary sqlite Dagster instance grown to 1k, 10k and 40k
  "patients" dynamic partitions (batches of 1000), timing the add, the partition queries, a partitioned
  asset's status queries and one tick of every ticking sensor in `sensors.ALL_SENSORS`; then 40k keys
  added in one call to a separate definition (the reported ~36k sqlite failure, dagster-io/dagster#16260,
  is one SQL `IN` list over all new keys, past sqlite's 32766-variable limit).
* **Partition scale on Postgres** (`bench_scale.py`): a throwaway PostgreSQL on loopback holds the Dagster
  instance (`RADPLAN_DAGSTER_PG_URL`), grown from 1,000 to 100,000 patients: partitions added in batches of
  1000, and one `patient_features` and one `patient_recommendations` materialization per patient written in
  batches (what the measured operations read; runs are not seeded per patient). At each size, median of 3:
  one steady-state tick of every ticking sensor right after an intake that changed one patient (cursors from
  the previous tick, the daemon's run-key check included); launching the refresh sensor's run as the daemon
  does (code location's execution plan, `create_run`, `submit_run` to the run queue); the
  `patient_features` asset page (partitions view) in headless Chromium against dagster-webserver on the same
  instance, from navigation until "N Partitions" is rendered; one real patient's EHR and notes chain up to
  its feature row materialized. Ratios: 100,000 / 1,000 (target <= 2). Figures in `operations.json`
  (`scale.<N>.<measure>`, `scale.100000.<measure>_ratio_to_1000`, `scale.100000.ratio_to_1000` = the largest).
* **Cohort reads** (`bench_cohort_read.py`): `patient_features` (real schema, one row per patient) as 1,000
  and 100,000 hive partitions; every partition read as one frame by `radplan.lake.read_hive_dataset` (Arrow
  dataset reads in groups of `READ_GROUP_FILES` files) vs the per-partition Python loop it replaced, the
  compacted snapshot (cold, warm, after 1% changed) with the process's peak memory, and `cohort_table_spark`
  on local[2].
* **Production path** (`bench_operations.py`, `operations.json` keys `daemon.*`): a materialized 12-patient demo
  moved onto Postgres storage, `dagster-daemon` and `dagster-webserver` processes and Orthanc; 50 studies of 20
  new patients sent at once by concurrent `storescu` processes, then single follow-up studies one at a time. A
  study's latency runs from its StableStudy change in Orthanc to the end of the export run after its patient's
  refresh, on the daemon's own sensor ticks; each run is a process that imports the code location.

## Why some targets are missed (read with the figures above)

* **VCF vs oxbow and `bcftools query`**: radplan's reader is an Arrow-vectorized text parser (no per-record
  Python), but it does more than either peer: it validates every field so a malformed record is quarantined
  with its line instead of crashing or rejecting the file, splits multi-allelic records, writes one row per
  allele x sample (4x oxbow's rows for 4 samples, with per-allele depths, VAF and the picked CSQ transcript)
  and encodes that long table as Parquet. Its CPU time is about 1.2-1.5x oxbow's (`radplan_cpu_s` /
  `peer_cpu_s`); the wall-time ratio also depends on the load of the shared 2-core machine, since radplan
  parses on two threads and encodes Parquet on a third (single runs at 1-minute loads of 12-24 gave
  0.56x-0.93x oxbow). `bcftools query` only prints text (no typing, no Parquet). Memory is flat in file
  size (row `vcf_peak_rss`).
* **Radiomics 2-worker speed-up**: one demo patient's lesions (~14k voxels at 1.5 mm, ~0.15 s on 1 worker)
  are too little work for a pool to start for (below `PARALLEL_MIN_LESION_VOXELS` radplan stays in-process
  until a pool is running); the speed-up is measured over several patients' series in one batch, where the
  pool (kept per process, one task per lesion, crops sent while the next series is read) adds no CPU work
  (`cpu_s` of radplan_1 and radplan_2 match). Its wall-time ratio needs 2 idle cores: on the shared 2-core
  machine other processes take the second core (see the load average). Rerun on a quiet machine with
  `PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_radiomics.py --parallel-only` (~1 minute; replaces only
  the speed-up row).
* **Asset page at 100,000 partitions (Postgres)**: the partitions view of a per-patient asset asks Dagster's
  GraphQL `PartitionHealthQuery`, which returns every partition key of the dynamic partitions definition with
  its status: 4.0 MB at 100,000 patients against 40 KB at 1,000 (23 s of the 29 s page load, on a machine at
  load ~20). That is Dagster's UI and API for dynamic partitions; no radplan code runs in it. radplan's own
  paths (sensor ticks, run launch, one patient's refresh) do not grow with the partition count: the same SQL
  statements and rows at 200 and 2,000 patients (`tests/production/test_partition_scale.py`).
* **End to end at 100 patients**: `make bench` runs 20 and 50 patients to stay within 20 minutes on 2 cores.
  `python benchmarks/bench_e2e.py --sizes 100 --merge` measures the 100-patient point on its own (about
  11 minutes) and keeps the sizes measured before on the same machine (`make bench` merges the same way);
  the per-size table gives when each size was measured and the load at its start.
* **Production path (`daemon.*`)**: the latency of a study ends when its patient's FHIR bundle and report are
  written; a refresh run now writes them (`patient_report`), so a single study's chain is two runs, each a process
  (`daemon.single_study_hops_median_s`, `daemon.single_study_runs`): study stable to intake end ~6 s (queue to start
  ~3.5 s, run 0.7 s), intake end to the report ~17 s (the refresh ~3.7 s to start; in its run, the report ~12 s
  after the start, then the imaging metadata check, which nothing waits on). It was 27.6 s with the export as a
  third run; on this run's host every step was ~1.3x slower than in that measurement (same steps, e.g.
  `deid_studies` 1.0 s against 0.8 s), so the gain is not from faster assets. `daemon.single_study_table_s` runs on
  to the rewritten recommendations table (one more run). What is left of the 15 s target is sensor waits (the
  daemon's 5 s loop, `daemon.sensor_tick_gaps`) and two run start-ups (`daemon.definitions_import_s`: loading the
  code location imports no torch, MONAI, Presidio/spaCy, MLflow, dagster-aws or highdicom). In the burst every
  patient is new, so each refresh rebuilds all its sources: 20 refresh runs share the queue's 4 slots on 2 cores
  (`daemon.burst_runs`: refresh queued to started, median 197 s; ~75 s to run): the burst is bound by CPU, not by
  ticks. The burst measured 346 s at p95 before this change and 509 s after it; its steps that the change did not
  touch (EHR de-identification, extracts, the variants check) ran 1.3-1.6x slower too, so most of the difference
  is the host, and one run each cannot separate the rest.
"""


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _as_rows(name: str, payload) -> list[dict]:
    """Rows in the common schema; the single-object files of bench_incremental / bench_sensor_latency adapted."""
    if name == OPERATIONS.removesuffix(".json"):
        return _daemon_rows(payload)  # every other key: _operations_table
    if isinstance(payload, list):
        return [_segmentation_summary(row) if row.get("name") == "segmentation_held_out" else row
                for row in payload if isinstance(row, dict) and "name" in row]
    if not isinstance(payload, dict):
        return []
    if "name" in payload:
        return [payload]
    if "federated.auc" in payload or "federated.dice" in payload:
        return _federated_rows(payload)
    common = {"runs": 1, "load_average": payload.get("load_average_1m"), "note": payload.get("note")}
    if "incremental_s" in payload:
        return [{"name": "incremental_rematerialization", "radplan": payload["incremental_s"], "peer": payload["full_s"],
                 "unit": "s", "ratio": payload["ratio"], "target": f"<= {payload.get('target_ratio', 0.1)}",
                 "peer_tool": "the full run of the same home", **common}]
    if "latency_s" in payload:
        return [{"name": "sensor_latency", "radplan": payload["latency_s"], "peer": payload["target_s"], "unit": "s",
                 "ratio": round(payload["latency_s"] / payload["target_s"], 3), "target": "<= 1",
                 "peer_tool": "the latency target", **common}]
    return [{"name": name, "radplan": None, "peer": None, "unit": "", "ratio": None, **common}]


def _daemon_rows(payload: dict) -> list[dict]:
    """operations.json's daemon.* figures (bench_operations.py) as summary rows; the file's other keys are in its own table."""
    if "daemon.burst_p95_s" not in payload:
        return []
    daemon = {"runs": 1, "load_average": payload.get("daemon.load_average_1m_end"), "note": payload.get("daemon.note"),
              "quick": payload.get("daemon.quick"), "machine": payload.get("daemon.machine"), "date": payload.get("daemon.date")}
    rows = [{"name": f"daemon_burst_p95 ({payload['daemon.burst_studies']} studies, {payload['daemon.burst_patients']} patients)",
             "radplan": payload["daemon.burst_p95_s"], "peer": payload["daemon.burst_target_p95_s"], "unit": "s",
             "ratio": round(payload["daemon.burst_p95_s"] / payload["daemon.burst_target_p95_s"], 3), "target": "<= 1",
             "peer_tool": "the p95 target, study stable in Orthanc -> its patient's report and FHIR bundle written", **daemon}]
    if payload.get("daemon.single_study_s") is not None:
        rows.append({"name": "daemon_single_study", "radplan": payload["daemon.single_study_s"],
                     "peer": payload["daemon.single_study_target_s"], "unit": "s",
                     "ratio": round(payload["daemon.single_study_s"] / payload["daemon.single_study_target_s"], 3),
                     "target": "<= 1", "peer_tool": "the single-study target (daemon's own ticks)", **daemon})
    return rows


def _federated_rows(payload: dict) -> list[dict]:
    """bench_federated.py: federated vs pooled (AUC, Dice; ratio = federated - pooled) and transfer vs scratch Dice."""
    rows = []
    for name, new, peer, paired, peer_tool, target, part in (
        ("federated_response_auc", "federated.auc", "pooled.auc", "federated_minus_pooled.auc", "pooled training", ">= -0.02", "response"),
        ("federated_segmentation_dice", "federated.dice", "pooled.dice", "federated_minus_pooled.dice", "pooled training", ">= -0.02",
         "segmentation"),
        ("transfer_segmentation_dice", "transfer.dice", "scratch.dice", "transfer_minus_scratch.dice", "training from scratch at the new site",
         ">= 0.1", "segmentation"),
        ("federated_secure_response_auc", "federated_secure.auc", "federated.auc", None, "the same FedAvg in the clear", "", "response"),
        ("federated_secure_segmentation_dice", "federated_secure.dice", "federated.dice", None, "the same FedAvg in the clear", "",
         "segmentation"),
    ):
        a, b = (payload.get(new) or {}).get("value"), (payload.get(peer) or {}).get("value")
        if a is None and new not in payload and paired is None:
            continue  # a results file from before this setting existed
        difference = payload.get(paired) or {}
        interval = (f"paired difference 95% CI [{difference['ci_low']:.3f}, {difference['ci_high']:.3f}]"
                    if difference.get("ci_low") is not None else None)
        secure = payload.get(f"{part}.secure_vs_plain") if new.startswith("federated_secure.") else None
        if secure:
            interval = (f"max weight difference {secure['max_abs_weight_difference']:.1e}; job {secure['job_seconds']} s vs "
                        f"{secure['plain_job_seconds']} s in the clear (x{secure['time_ratio']})")
        rows.append({"name": name, "radplan": a, "peer": b, "unit": new.split(".")[1], "peer_tool": peer_tool, "target": target,
                     "ratio": None if a is None or b is None else round(a - b, 4), "runs": 1, "quick": payload.get("quick"),
                     "load_average": (payload.get(f"{part}.timing") or {}).get("load_average"),
                     "note": (payload.get(new) or {}).get("missing") or interval})
    return rows


def _segmentation_summary(row: dict) -> dict:
    """bench_segmentation's row (Dice/HD95 with CIs) in the summary table's schema: held-out Dice vs its target."""
    dice, target = row["dice"]["mean"], row["target_dice"]
    return {"radplan": dice, "peer": target, "unit": "Dice", "ratio": round(dice / target, 3), "target": ">= 1",
            "peer_tool": "the Dice target", "runs": 1, **row}


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _verdict(row: dict) -> str:
    if row.get("quick"):
        return "none (quick run)"
    if row["name"] == "e2e_per_patient_scaling" and row["sizes"][-1]["patients"] < 100:
        return f"not measured at 100 patients ({row['sizes'][0]['patients']} to {row['sizes'][-1]['patients']} here)"
    match = TARGET.match(str(row.get("target", "")))
    if not match or row.get("ratio") is None:
        return ""
    limit = float(match.group(2))
    met = row["ratio"] >= limit if match.group(1) == ">=" else row["ratio"] <= limit
    return "met" if met else "**missed**"


def _summary_table(rows: list[dict]) -> list[str]:
    lines = ["| name | radplan | peer | unit | ratio | target | verdict | runs |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        peer = _fmt(row.get("peer"))
        if row.get("peer_tool"):
            peer += f" ({row['peer_tool']})"
        quick = " _quick_" if row.get("quick") else ""
        lines.append(f"| `{row['name']}`{quick} | {_fmt(row.get('radplan'))} | {peer} | {row.get('unit', '')} | "
                     f"**{_fmt(row.get('ratio'))}** | {row.get('target', '—')} | {_verdict(row)} | {row.get('runs', '')} |")
    return lines


def _details(rows: list[dict]) -> list[str]:
    lines: list[str] = []
    for row in rows:
        if row["name"] == "e2e_per_patient_scaling":
            lines += ["", "### End to end, per cohort size", "",
                      "| patients | generate s | demo wall s | per-patient stages s | cohort stages s | per-patient cost s | peak RSS GiB | all ok | measured (load at start) |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            for m in row["sizes"]:
                when = f"{m['date'][:16].replace('T', ' ')} ({_fmt(m.get('load_average_at_start'))})" if m.get("date") else "—"
                lines.append(f"| {m['patients']} | {m['generate_seconds']} | {m['demo_wall_seconds']} | {m['per_patient_stage_seconds']} | "
                             f"{m['cohort_stage_seconds']} | {m['per_patient_cost_s']} | {m['peak_tree_rss_gib']} | {m['exit_code'] == 0} | {when} |")
            seen = list(dict.fromkeys(s for m in row["sizes"] for s in m["stages"]))
            stage_names = sorted(seen, key=lambda name: DEMO_ORDER.index(name) if name in DEMO_ORDER else len(DEMO_ORDER))
            lines += ["", "| stage | " + " | ".join(f"{m['patients']} patients (s)" for m in row["sizes"]) + " |",
                      "| --- |" + " --- |" * len(row["sizes"])]
            for stage in stage_names:
                lines.append(f"| {stage} | " + " | ".join(_fmt(m["stages"].get(stage, {}).get("seconds")) for m in row["sizes"]) + " |")
        elif row["name"] == "partition_scale":
            lines += ["", "### Partition scale (sqlite)", "",
                      "| partitions | add s | get_dynamic_partitions s | has_dynamic_partition ms | get_materialized_partitions s | "
                      "get_status_by_partition s | sensor tick total s | ok |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            for m in row["steps"]:
                if m.get("single_call_probe"):
                    outcome = f"ok in {m['add_seconds']} s" if m["ok"] else f"failed: {m['error']}"
                    lines.append(f"| {m['partitions']:,} added in one call (separate definition) | {outcome} | | | | | | {m['ok']} |")
                    continue
                if "error" in m:
                    lines.append(f"| {m['partitions']:,} | failed: {m['error']} | | | | | | no |")
                    continue
                lines.append(f"| {m['partitions']:,} | {m['add_seconds']} | {m['get_dynamic_partitions_s']} | {m['has_dynamic_partition_ms']} | "
                             f"{m['get_materialized_partitions_s']} | {m['get_status_by_partition_s']} | {m['sensor_tick_total_s']} | {m['ok']} |")
            last = next((m for m in reversed(row["steps"]) if m.get("sensor_ticks_s")), {})
            if last.get("sensor_ticks_s"):
                lines += ["", f"Per sensor at {last['partitions']:,} partitions (s): " + ", ".join(
                    f"`{name}` {_fmt(value)}" for name, value in last["sensor_ticks_s"].items()) + "."]
        elif row["name"].startswith("partition_scale_postgres") and row.get("steps"):
            lines += ["", "### Partition scale (Postgres)", "",
                      "| partitions | sensor tick s | run launch s | asset page s | refresh s | tick SQL statements / rows | load before / after |",
                      "| --- | --- | --- | --- | --- | --- | --- |"]
            for m in row["steps"]:
                queries = m.get("sensor_tick_queries", {})
                lines.append(f"| {m['partitions']:,} | {_fmt(m.get('sensor_tick_s'))} | {_fmt(m.get('run_launch_s'))} | "
                             f"{_fmt(m.get('asset_page_s'))} | {_fmt(m.get('refresh_s'))} | {queries.get('statements', '—')} / "
                             f"{queries.get('rows', '—')} | {_fmt(m.get('load_average_before'))} / {_fmt(m.get('load_average_after'))} |")
        elif row["name"] == "cohort_read":
            lines += ["", "### Cohort reads", "",
                      "| partitions | Arrow dataset s | former Python loop s | snapshot cold / warm / after 1% s | peak RSS MB | "
                      "Spark on snapshot / folder s | load before / after |",
                      "| --- | --- | --- | --- | --- | --- | --- |"]
            for m in row["steps"]:
                lines.append(f"| {m['partitions']:,} | {_fmt(m.get('arrow_dataset_s'))} | {_fmt(m.get('python_loop_s'))} | "
                             f"{_fmt(m.get('snapshot_cold_s'))} / {_fmt(m.get('snapshot_warm_s'))} / {_fmt(m.get('snapshot_after_1pct_s'))} | "
                             f"{_fmt(m.get('python_peak_rss_mb'))} | {_fmt(m.get('spark_snapshot_s'))} / {_fmt(m.get('spark_folder_s'))} | "
                             f"{_fmt(m.get('load_average_before'))} / {_fmt(m.get('load_average_after'))} |")
        elif row["name"] == "ct_series_peak_memory":
            lines += ["", f"### Peak memory, {row['series']}", "", "| step | seconds | process ru_maxrss MiB |", "| --- | --- | --- |"]
            for step, values in row["steps"].items():
                lines.append(f"| {step} | {values['seconds']} | {values['ru_maxrss_mib']} |")
            lines += ["", f"Peak summed RSS of the process tree: **{row['radplan']} GiB** (target ≤ 2.5 GiB)."]
        elif row["name"] == "segmentation_held_out":
            interval = lambda m: f"{_fmt(m['mean'])} [{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]"  # noqa: E731
            lines += ["", "### Lesion segmentation, held-out synthetic patients", "",
                      f"{row['train_images']} training images ({row['train_patients']} patients), {row['images']} held-out images "
                      f"({row['patients']} other patients); {row['epochs']} epochs / {row['steps']} steps in {_fmt(row['train_seconds'])} s wall, "
                      f"{_fmt(row['train_cpu_seconds'])} CPU s of a {_fmt(row['train_cpu_seconds_budget'])} CPU s budget "
                      f"({row['torch_threads']} threads; load average {row['load_average']} at start, "
                      f"{row['load_average_after_training']} after training). Mean with 95% patient-bootstrap CI; "
                      "HD95 undefined (missed lesion) counted apart.", "",
                      "| scope | lesions | Dice | HD95 mm | HD95 undefined |", "| --- | --- | --- | --- | --- |",
                      f"| whole images | {row['images']} images | {interval(row['dice'])} | {interval(row['hd95_mm'])} | {row['hd95_mm']['n_undefined']} |"]
            for site, scores in row["sites"].items():
                lines.append(f"| lesions: {site} | {scores['lesions']} | {interval(scores['dice'])} | {interval(scores['hd95_mm'])} | "
                             f"{scores['hd95_mm']['n_undefined']} |")
        elif row["name"] in ("radiomics_overhead", "parallel_speedup_2_workers") and row.get("times_s"):
            lines += ["", f"### Radiomics, {row['input']}", "",
                      "Wall seconds per run: " + "; ".join(f"{k}: {v}" for k, v in row["times_s"].items()) + "."]
            if row.get("cpu_s"):
                lines += ["", "CPU seconds per run (process and pool workers): "
                          + "; ".join(f"{k}: {v}" for k, v in row["cpu_s"].items()) + "."]
            if row.get("cpu_s_per_process_2_workers"):
                lines += ["", "CPU seconds per process per 2-worker run (workers and the calling process): "
                          + "; ".join(str(split) for split in row["cpu_s_per_process_2_workers"])
                          + f". Load average {row.get('load_average_at_start')} at the start of these runs."]
    return lines


def _operations_table(figures) -> list[str]:
    """operations.json: every named figure (keys such as scale.100000.sensor_tick_s), the *.meta objects apart."""
    if not isinstance(figures, dict) or not figures:
        return []
    lines = ["", f"### Named figures (`benchmarks/results/{OPERATIONS}`)", "", "| key | value |", "| --- | --- |"]
    lines += [f"| `{key}` | {_fmt(value)} |" for key, value in figures.items() if not isinstance(value, dict)]
    for key, value in figures.items():
        if isinstance(value, dict):
            lines += ["", f"`{key}`: " + "; ".join(f"{k}: {_fmt(v) if not isinstance(v, dict) else v}" for k, v in value.items())]
    return lines


def render() -> str:
    files = [RESULTS_DIR / name for name in ORDER if (RESULTS_DIR / name).exists()]
    files += sorted(p for p in RESULTS_DIR.glob("*.json") if p.name not in ORDER and p.name not in ("run_all.json", OPERATIONS))
    rows = [row for path in files for row in _as_rows(path.stem, _load(path))]
    if (RESULTS_DIR / OPERATIONS).exists():  # its daemon.* latencies as summary rows too (every key: _operations_table)
        rows += _as_rows(OPERATIONS.removesuffix(".json"), _load(RESULTS_DIR / OPERATIONS) or {})
    run = _load(RESULTS_DIR / "run_all.json") or {}
    machines = sorted({row.get("machine", "") for row in rows} - {""})
    dates = sorted(row.get("date", "") for row in rows if row.get("date"))
    lines = [INTRO]
    lines.append(f"**Machine:** {'; '.join(machines) or 'unknown'}  ")
    if dates:
        lines.append(f"**Measured:** {dates[0]} to {dates[-1]} (UTC)  ")
    loads = [row["load_average"] for row in rows if row.get("load_average") is not None]
    if loads:
        lines.append(f"**1-minute load average at the end of each benchmark:** {min(loads)} to {max(loads)} "
                     f"(the benchmark itself included; more than ~2 on this machine means other work shared it)  ")
    if run:
        lines.append(f"**`make bench` wall time:** {run['total_seconds']:.0f} s (budget {run['budget_seconds']} s); "
                     + ", ".join(f"`{r['script']}` {r['seconds']:.0f} s" for r in run["scripts"]))
    if any(row.get("quick") for row in rows):
        lines += ["", "> **Rows marked _quick_ come from `RADPLAN_BENCH_QUICK=1` runs (reduced sizes): development "
                  "figures, not the benchmark's.**"]
    lines += ["", "## Results", "", "Ratios: radplan / peer for rates (higher is better); for times, memory and scaling, lower is better.", ""]
    lines += _summary_table(rows)
    lines += ["", "## Details"] + _details(rows) + _operations_table(_load(RESULTS_DIR / OPERATIONS))
    notes = [f"* `{row['name']}`: {row['note']}" for row in rows if row.get("note")]
    if notes:
        lines += ["", "### Notes", "", *notes]
    lines += ["", METHODS]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    from radplan.lake import atomic_write_text

    atomic_write_text(DOC, render())
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

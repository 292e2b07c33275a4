"""One patient's read of shared EHR extracts as the cohort in them grows: ``ehr_extracts``' read, scoped to the patient.

The extracts are the real Synthea samples in ../shared/data/ehr (CSV tables of 27 patients and FHIR bulk NDJSON of
6 others), written ``--copies`` times over with every patient id rewritten, so the cohort grows while each patient's
records stay the same real records. At each size one CSV patient and one FHIR patient are read the two ways, in the
same process after a warm-up read (imports excluded), median of ``--repeats``:

- radplan: the scoped read ``ehr_extracts`` does (``PatientScope``: the other registered patients' lines are
  skipped before they are typed or validated);
- peer: validating the whole extract and keeping the patient's rows, which is what each patient's refresh did
  before (every line typed by pandas and every resource validated by fhir.resources).

Also at each size, the EHR part of an intake whose EHR folders did not change (a PACS study or a VCF arrived): the
landing token only, the previous intake's EHR patients kept, vs re-reading every row as every intake did before.

Writes benchmarks/results/ehr_scope.json (``ehr_patient_read`` and ``intake_ehr_unchanged``: seconds at the largest
size, ratio to the read before).

    python benchmarks/bench_ehr_scope.py [--copies 1 10 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from _common import QUICK, median_seconds, result_row, write_results  # noqa: E402

SHARED_EHR = HERE.parent.parent / "shared" / "data" / "ehr"
FHIR_TYPES = ("Patient", "Condition", "MedicationRequest", "Observation", "DocumentReference")  # radplan_assets.ehr


def _source_ids() -> tuple[list[str], list[str]]:
    """The patient ids of the CSV sample and of the FHIR sample (different patients)."""
    csv_ids = [row["Id"] for row in csv.DictReader((SHARED_EHR / "synthea_csv" / "patients.csv").open(encoding="utf-8"))]
    fhir_ids = [json.loads(line)["id"] for line in (SHARED_EHR / "synthea_fhir_bulk" / "Patient.ndjson").open(encoding="utf-8")]
    return csv_ids, fhir_ids


def _copy_id(patient_id: str, copy: int) -> str:
    return f"{patient_id[:-6]}{copy:06d}"


def write_extracts(out: Path, copies: int) -> tuple[Path, Path, set[str]]:
    """``copies`` rewrites of the shared extracts, every patient id replaced per copy; the ids registered."""
    csv_ids, fhir_ids = _source_ids()
    ids = sorted(set(csv_ids) | set(fhir_ids))
    csv_dir, fhir_dir = out / "csv", out / "fhir"
    csv_dir.mkdir(parents=True)
    fhir_dir.mkdir(parents=True)

    def rewrite(text: str, copy: int) -> str:
        for patient_id in ids:
            text = text.replace(patient_id, _copy_id(patient_id, copy))
        return text

    for path in sorted((SHARED_EHR / "synthea_csv").glob("*.csv")):
        header, _, body = path.read_text(encoding="utf-8").partition("\n")
        with (csv_dir / path.name).open("w", encoding="utf-8") as handle:
            handle.write(header + "\n")
            for copy in range(copies):
                handle.write(rewrite(body, copy))
    for path in sorted((SHARED_EHR / "synthea_fhir_bulk").glob("*.ndjson")):
        body = path.read_text(encoding="utf-8")
        with (fhir_dir / path.name).open("w", encoding="utf-8") as handle:
            for copy in range(copies):
                handle.write(rewrite(body, copy))
    return csv_dir, fhir_dir, {_copy_id(patient_id, copy) for patient_id in ids for copy in range(copies)}


def _scoped(csv_dir: Path, fhir_dir: Path, patient: str, registered: set[str]) -> int:
    from radplan.ehr import extracts

    scope = extracts.PatientScope(frozenset({patient}), "bench", frozenset(registered - {patient}))
    tables, _ = extracts.read_synthea_csv(csv_dir, scope=scope)
    resources, _ = extracts.read_fhir_ndjson(fhir_dir, FHIR_TYPES, scope=scope)
    return _patient_records(tables, resources, patient)


def _whole(csv_dir: Path, fhir_dir: Path, patient: str, _registered: set[str]) -> int:
    from radplan.ehr import extracts

    tables, _ = extracts.read_synthea_csv(csv_dir, patient_ids={patient})
    resources, _ = extracts.read_fhir_ndjson(fhir_dir, FHIR_TYPES)
    return _patient_records(tables, resources, patient)


def _patient_records(tables: dict, resources: dict, patient: str) -> int:
    """The patient's CSV rows plus FHIR table rows: both ways must find the same records."""
    from radplan.ehr.extracts import fhir_to_tables

    count = sum(len(frame) for frame in tables.values())
    for frame in fhir_to_tables(resources).values():
        column = next(name for name in ("PATIENT", "patient", "Id") if name in frame.columns)
        count += int((frame[column] == patient).sum())
    return count


def _intake_unchanged(csv_dir: Path, fhir_dir: Path) -> int:
    """What an intake does with EHR extracts that did not change: the landing token only (previous rows kept)."""
    from radplan.inventory import landing_state
    from radplan.pseudonym import DEMO_KEY, Pseudonymizer

    return landing_state(Pseudonymizer(DEMO_KEY).token, [csv_dir, fhir_dir])[1]


def _intake_reread(csv_dir: Path, fhir_dir: Path) -> int:
    """What every intake did before: the landing token, then every row fingerprinted and every patient row validated."""
    from radplan.ehr.extracts import accepted_patient_ids
    from radplan.inventory import ehr_row_fingerprints

    _intake_unchanged(csv_dir, fhir_dir)
    ehr_row_fingerprints(csv_dir, fhir_dir)
    return len(accepted_patient_ids(csv_dir, fhir_dir))




def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 5] if QUICK else [1, 10, 50])
    parser.add_argument("--repeats", type=int, default=1 if QUICK else 3)
    args = parser.parse_args()
    steps = []
    with tempfile.TemporaryDirectory(prefix="radplan-bench-ehr-") as work:
        csv_dir, fhir_dir, registered = write_extracts(Path(work) / "warm", 1)
        _whole(csv_dir, fhir_dir, sorted(registered)[0], registered)  # imports (pandas, fhir.resources) out of the timings
        for copies in args.copies:
            csv_dir, fhir_dir, registered = write_extracts(Path(work) / f"copies{copies}", copies)
            size = sum(p.stat().st_size for p in [*csv_dir.iterdir(), *fhir_dir.iterdir()])
            step = {"copies": copies, "patients": len(registered), "extract_mib": round(size / 2**20, 1), "patients_read": {}}
            # A patient of the CSV sample and one of the FHIR sample, from the first copy: both readers timed.
            csv_ids, fhir_ids = _source_ids()
            for label, patient in (("csv_patient", _copy_id(csv_ids[0], 0)), ("fhir_patient", _copy_id(fhir_ids[0], 0))):
                scoped_s, scoped_records = median_seconds(_scoped, args.repeats, csv_dir, fhir_dir, patient, registered)
                whole_s, whole_records = median_seconds(_whole, args.repeats, csv_dir, fhir_dir, patient, registered)
                if scoped_records != whole_records:
                    raise SystemExit(f"{label}: the scoped read found {scoped_records} records, the whole read {whole_records}")
                step["patients_read"][label] = {"records": scoped_records, "scoped_s": round(scoped_s, 3), "whole_s": round(whole_s, 3)}
            unchanged_s, _ = median_seconds(_intake_unchanged, args.repeats, csv_dir, fhir_dir)
            reread_s, patients_found = median_seconds(_intake_reread, args.repeats, csv_dir, fhir_dir)
            if patients_found != len(registered):
                raise SystemExit(f"the intake found {patients_found} EHR patients of {len(registered)}")
            step["intake_unchanged_s"], step["intake_reread_s"] = round(unchanged_s, 4), round(reread_s, 3)
            step["scoped_s"] = round(sum(r["scoped_s"] for r in step["patients_read"].values()), 3)
            step["whole_s"] = round(sum(r["whole_s"] for r in step["patients_read"].values()), 3)
            print(json.dumps(step), flush=True)
            steps.append(step)
    last, first = steps[-1], steps[0]
    row = result_row(
        "ehr_patient_read", radplan=last["scoped_s"], peer=last["whole_s"], unit="s",
        ratio=round(last["scoped_s"] / last["whole_s"], 3), runs=args.repeats, lower_is_better=True,
        peer_tool=f"validating the whole extract, then keeping the patient's rows (the read before PatientScope), {last['patients']} patients",
        target="<= 0.1",
        growth={"scoped": round(last["scoped_s"] / first["scoped_s"], 2), "whole": round(last["whole_s"] / first["whole_s"], 2),
                "patients": round(last["patients"] / first["patients"], 1)},
        note="two patients' reads (one CSV, one FHIR) summed, median of the repeats; the scoped read still scans every line "
             "(a JSON decode per FHIR line; for a CSV line another patient owns, a byte split when the line has no quote), so it grows "
             "with the extract, with a smaller constant",
        steps=steps,
    )
    intake = result_row(
        "intake_ehr_unchanged", radplan=last["intake_unchanged_s"], peer=last["intake_reread_s"], unit="s",
        ratio=round(last["intake_unchanged_s"] / last["intake_reread_s"], 5), runs=args.repeats, lower_is_better=True,
        peer_tool=f"re-reading every row of the unchanged extracts (what every intake did before), {last['patients']} patients",
        target="<= 0.1",
        note="the EHR part of an intake whose EHR landing folders did not change (a new PACS study, a new VCF): the keyed "
             "landing token over the files' paths, sizes and times, the previous intake's EHR patients kept",
        steps=[{k: step[k] for k in ("patients", "extract_mib", "intake_unchanged_s", "intake_reread_s")} for step in steps],
    )
    path = write_results("ehr_scope.json", [row, intake])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

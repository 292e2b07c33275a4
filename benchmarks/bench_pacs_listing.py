"""The intake's PACS listing as the PACS grows: every study re-read vs only the changed ones (a change-feed intake).

A real Orthanc on loopback (tests/support/orthanc.py) is filled with single-instance studies (copies of one real CT
instance of ../shared/data/imaging/ibsi_sts_002 with new UIDs), up to each ``--studies`` size. At each size, once
every study is stable, median of ``--repeats``:

- radplan: ``OrthancPacs.list_studies(known=...)`` with the previous listing, as an intake the PACS change feed asked
  for runs it after one new study arrived (the new study is read, the others keep their fingerprints);
- peer: ``OrthancPacs.list_studies()``, every study's series and instances read, as every intake did before (and
  as the other intakes still do, which also see deletions).

Both must give the same studies and fingerprints. Writes benchmarks/results/pacs_listing.json (``pacs_listing``:
seconds at the largest size, ratio known / full).

    python benchmarks/bench_pacs_listing.py [--studies 100 400 1600] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO), str(REPO / "tests")]

from _common import QUICK, median_seconds, result_row, write_results  # noqa: E402

TEMPLATE = next(iter(sorted((REPO.parent / "shared" / "data" / "imaging" / "ibsi_sts_002" / "dicom" / "CT" / "image").glob("*.dcm"))))


def _store_studies(server, template, count: int, first: int) -> None:
    from pydicom.uid import generate_uid

    for index in range(first, first + count):
        server.store_copy(template, PatientID=f"BENCH{index:06d}", StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid())


def _stable(pacs, expected: int, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while True:
        studies, _ = pacs.list_studies()
        if len(studies) == expected and all(study.revision for study in studies):
            return studies
        if time.monotonic() > deadline:
            raise SystemExit(f"{expected} studies not all stable after {timeout_s} s")
        time.sleep(1)




def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, nargs="+", default=[50, 200] if QUICK else [100, 400, 1600])
    parser.add_argument("--repeats", type=int, default=1 if QUICK else 3)
    args = parser.parse_args()
    import pydicom

    from radplan.settings import disable_telemetry
    from radplan_resources import OrthancPacs
    from support.orthanc import OrthancServer

    disable_telemetry()
    template = pydicom.dcmread(TEMPLATE)
    steps = []
    with tempfile.TemporaryDirectory(prefix="radplan-bench-pacs-") as work:
        server = OrthancServer(Path(work) / "orthanc").start()
        try:
            pacs = OrthancPacs(url=server.url)
            stored = 0
            for size in sorted(args.studies):
                _store_studies(server, template, size - 1 - stored, stored)
                before = _stable(pacs, size - 1)
                _store_studies(server, template, 1, size - 1)  # the arrival the change feed reports
                stored = size
                after = _stable(pacs, size)
                known = {study.study_ref: study for study in before}
                known_s, incremental = median_seconds(lambda: pacs.list_studies(known=known)[0], args.repeats)
                full_s, full = median_seconds(lambda: pacs.list_studies()[0], args.repeats)
                if incremental != full or full != after:
                    raise SystemExit(f"{size} studies: the listing with known studies differs from the full listing")
                step = {"studies": size, "known_s": round(known_s, 4), "full_s": round(full_s, 4),
                        "full_ms_per_study": round(1000 * full_s / size, 3)}
                print(json.dumps(step), flush=True)
                steps.append(step)
        finally:
            server.stop()
    last = steps[-1]
    row = result_row(
        "pacs_listing", radplan=last["known_s"], peer=last["full_s"], unit="s", ratio=round(last["known_s"] / last["full_s"], 4),
        runs=args.repeats, lower_is_better=True, target="<= 0.1",
        peer_tool=f"re-reading every study's series and instances (every intake before; non-feed intakes now), {last['studies']} studies",
        note="Orthanc on loopback, single-instance studies, one new study since the known listing; both listings equal. "
             "The listing with known studies still makes one /studies?expand request whose answer grows with the PACS",
        steps=steps,
    )
    print(f"wrote {write_results('pacs_listing.json', [row])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``radplan deid-dicom`` end to end on a temporary folder."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pydicom
import pytest

from radplan.imaging import deid_cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="radplan")
    deid_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _input_folder(tmp_path: Path, sts_dir: Path) -> Path:
    in_dir = tmp_path / "in"
    (in_dir / "ct").mkdir(parents=True)
    for path in sorted((sts_dir / "dicom" / "CT" / "image").glob("*.dcm"))[:3]:
        shutil.copy(path, in_dir / "ct" / path.name)
    shutil.copy(sts_dir / "dicom" / "CT" / "mask" / "RS.dcm", in_dir / "RS.dcm")
    (in_dir / "readme.txt").write_text("not DICOM")
    return in_dir


def test_cli_deidentifies_a_folder_and_prints_a_phi_free_summary(tmp_path, sts_dir, capsys, monkeypatch):
    monkeypatch.setenv("RADPLAN_DEMO", "1")
    monkeypatch.delenv("RADPLAN_DEID_KEY", raising=False)
    in_dir = _input_folder(tmp_path, sts_dir)
    code = _run(["deid-dicom", str(in_dir), str(tmp_path / "out"), "--quarantine", str(tmp_path / "q"),
                 "--burned-in", "flag"])
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed)
    assert summary["instances_written"] == 4
    assert summary["patients"] == 1 and summary["series"] == 2
    assert [q["error_class"] for q in summary["quarantined"]] == ["InvalidDicomError"]
    assert "STS_002" not in printed
    written = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(written) == 4
    for path in written:
        ds = pydicom.dcmread(path)
        # out/<patient_key>/<study_uid>/<series_uid>/<sop_uid>.dcm
        assert path.relative_to(tmp_path / "out").parts == (
            ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm")
        assert ds.PatientIdentityRemoved == "YES"
    assert (tmp_path / "q" / "dicom").is_dir()


def test_cli_without_a_key_is_a_configuration_error(tmp_path, sts_dir, capsys, monkeypatch):
    monkeypatch.delenv("RADPLAN_DEMO", raising=False)
    monkeypatch.delenv("RADPLAN_DEID_KEY", raising=False)
    in_dir = _input_folder(tmp_path, sts_dir)
    assert _run(["deid-dicom", str(in_dir), str(tmp_path / "out")]) == 2
    assert "RADPLAN_DEID_KEY" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert _run(["deid-dicom", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2

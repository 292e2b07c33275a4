"""The genomics CLI subcommands run the library code paths end to end."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import subprocess
import sys
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from radplan.genomics.cli import register


def _radplan(*args: str) -> SimpleNamespace:
    """Run a genomics subcommand in-process through the same argparse wiring radplan_cli uses."""
    parser = argparse.ArgumentParser(prog="radplan")
    register(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(list(args))
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = parsed.func(parsed)
    return SimpleNamespace(returncode=code, stdout=stdout.getvalue(), stderr=stderr.getvalue())


def test_vcf_to_parquet_cli(shared_data, tmp_path, pseudonymizer):
    out = tmp_path / "o.parquet"
    done = _radplan("vcf-to-parquet", str(shared_data / "genomics/vcf/vcf2maf_test_mutect.vcf"), str(out))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["records"] == 500 and summary["samples"] == 2
    assert set(pq.read_table(out).column("sample").to_pylist()) == {pseudonymizer.patient_key("TUMOR"), pseudonymizer.patient_key("NORMAL")}


def test_vcf_to_parquet_cli_reports_quarantined_records_and_keeps_the_rest(shared_data, tmp_path):
    lines = (shared_data / "genomics/vcf/vcf2maf_test_mutect.vcf").read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    lines[first + 7] = "\t".join(lines[first + 7].split("\t")[:5]) + "\n"  # a record cut after ALT
    bad = tmp_path / "cut_record.vcf"
    bad.write_text("".join(lines))
    done = _radplan("vcf-to-parquet", "--no-pseudonymize", str(bad), str(tmp_path / "o.parquet"))
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"quarantined: cut_record.vcf:{first + 8}: 5 tab-separated columns where the header declares 11 (unknown)"]
    assert json.loads(done.stdout)["records"] == 500 and pq.read_table(tmp_path / "o.parquet").num_rows == 2 * 499


def test_vcf_to_parquet_cli_rejects_bad_input(tmp_path):
    bad = tmp_path / "bad.vcf"
    bad.write_text("not a vcf\n")
    done = _radplan("vcf-to-parquet", str(bad), str(tmp_path / "o.parquet"))
    assert done.returncode == 2 and "error:" in done.stderr and not (tmp_path / "o.parquet").exists()


def test_pgx_cli(shared_data, tmp_path):
    pgx = shared_data / "genomics/pgx"
    out = tmp_path / "report.tsv"
    done = _radplan("pgx", str(pgx / "pharmcat.example.vcf"), "--outside-call", str(pgx / "pharmcat.example.outsideCall.tsv"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = {r["gene"]: r for r in csv.DictReader(out.open(), delimiter="\t")}
    assert (rows["CYP2D6"]["diplotype"], rows["CYP2D6"]["phenotype"], rows["CYP2D6"]["activity_score"]) == ("*1/*3", "Intermediate Metabolizer", "1.0")
    assert (rows["VKORC1"]["phenotype"], rows["VKORC1"]["genotype"], rows["VKORC1"]["interpretation"]) == ("", "rs9923231 C/C", "-1639 GG")
    summary = json.loads(done.stdout)
    assert (summary["called"], summary["indeterminate"], summary["samples"]) == (len(rows), 0, 1)
    assert done.stderr == ""


def test_pgx_cli_prints_indeterminate_calls(shared_data, tmp_path):
    source = shared_data / "genomics/pgx/pharmcat.example.vcf"
    vcf = tmp_path / "nocall.vcf"
    # DPYD *12's position (rs78060119) is a no-call and NUDT15's rs116855232 is absent
    vcf.write_text("".join(line.replace("\tGT\t0/0", "\tGT\t./.") if "\trs78060119\t" in line else line
                           for line in source.read_text().splitlines(keepends=True) if "\trs116855232\t" not in line))
    out = tmp_path / "report.tsv"
    done = _radplan("pgx", str(vcf), "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = {r["gene"]: r for r in csv.DictReader(out.open(), delimiter="\t")}
    assert (rows["DPYD"]["call_status"], rows["DPYD"]["phenotype"], rows["DPYD"]["activity_score"]) == ("indeterminate", "", "")
    assert rows["DPYD"]["missing_positions"] == "chr1:97573943 (rs78060119): no-call genotype"
    assert "indeterminate: sample 0 DPYD" in done.stderr and "rs78060119" in done.stderr
    assert "indeterminate: sample 0 NUDT15" in done.stderr and "rs116855232): not in the VCF" in done.stderr
    assert json.loads(done.stdout)["indeterminate"] == 2


@pytest.mark.slow
def test_radplan_console_command(shared_data, tmp_path):
    out = tmp_path / "o.parquet"
    done = subprocess.run([sys.executable, "-m", "radplan_cli.main", "vcf-to-parquet",
                           str(shared_data / "genomics/vcf/vcf2maf_test.vcf"), str(out), "--build", "GRCh37"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["build"] == "GRCh37"

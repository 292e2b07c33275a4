"""Benchmark: how fast `radplan --help` and every `radplan <command> --help` answer, and whether progress shows.

Help: wall time (and CPU time, user + system, which other load on the machine disturbs less) of a fresh
interpreter running ``python -m radplan_cli.main [command] --help``, median of ``--runs`` runs, against the
floor every Python command pays (``python -c pass`` in the same venv); target < 0.5 s wall. Progress: ``radplan deid-dicom`` on the shared IBSI CT/MR/PET series, once with stdout
and stderr on a pseudo-terminal (a bar counting the files must be drawn) and once into pipes (stdout
must be exactly the JSON summary, with no bar and no terminal codes on either stream).
Writes benchmarks/results/cli.json.

Run: .venv/bin/python benchmarks/bench_cli.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import QUICK, REPO, result_row, write_results

TARGET_SECONDS = 0.5
SHARED_DICOM = Path(os.environ.get("RADPLAN_SHARED_DATA", REPO.parent / "shared" / "data")) / "imaging" / "ibsi_sts_002" / "dicom"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "RADPLAN_DEMO": "1"}


def _median_seconds(command: list[str], runs: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds of the child: user + system, less disturbed by other load)."""
    import resource

    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def _subcommands() -> list[str]:
    code = "import json, radplan_cli.main; print(json.dumps(sorted(radplan_cli.main.build_parser()._subparsers._group_actions[0].choices)))"
    return json.loads(subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True, check=True).stdout)


def _on_terminal(command: list[str]) -> tuple[int, str]:
    import pty
    import select

    controller, terminal = pty.openpty()
    process = subprocess.Popen(command, cwd=REPO, env={**_env(), "COLUMNS": "120", "TERM": "xterm"},
                               stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, close_fds=True)
    os.close(terminal)
    chunks = []
    while select.select([controller], [], [], 600)[0]:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return process.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def progress_behaviour() -> dict:
    files = sum(1 for p in SHARED_DICOM.rglob("*") if p.is_file() and not p.name.startswith("."))
    with tempfile.TemporaryDirectory(prefix="radplan-bench-cli-") as work:
        command = [sys.executable, "-m", "radplan_cli.main", "deid-dicom", str(SHARED_DICOM)]
        code, terminal = _on_terminal([*command, str(Path(work) / "tty")])
        piped = subprocess.run([*command, str(Path(work) / "pipe")], cwd=REPO, env=_env(), capture_output=True, text=True)
    try:
        json.loads(piped.stdout)
        stdout_is_json = True
    except ValueError:
        stdout_is_json = False
    return {
        "input_files": files,
        "terminal_exit_code": code,
        "bar_drawn_on_terminal": "de-identifying DICOM files" in terminal and f"/{files}" in terminal,
        "pipe_exit_code": piped.returncode,
        "pipe_stdout_is_the_json_summary": stdout_is_json,
        "pipe_free_of_bars_and_terminal_codes": not any(m in piped.stdout + piped.stderr for m in ("\r", "\x1b[", "━")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3 if QUICK else 7)
    args = parser.parse_args()

    floor, floor_cpu = _median_seconds([sys.executable, "-c", "pass"], args.runs)
    rows = []
    for command in [None, *_subcommands()]:
        argv = [sys.executable, "-m", "radplan_cli.main", *([command] if command else []), "--help"]
        seconds, cpu = _median_seconds(argv, args.runs)
        rows.append(result_row(f"cli_help_{command or 'radplan'}", radplan=round(seconds, 3), peer=round(floor, 3),
                               unit="s (median wall time; peer: bare `python -c pass`)", ratio=round(seconds / floor, 2),
                               runs=args.runs, command=" ".join(["radplan", *([command] if command else []), "--help"]),
                               cpu_seconds=round(cpu, 3), peer_cpu_seconds=round(floor_cpu, 3),
                               target_seconds=TARGET_SECONDS, within_target=seconds < TARGET_SECONDS))
        print(f"{rows[-1]['command']}: {seconds:.3f} s wall, {cpu:.3f} s CPU "
              f"(python -c pass: {floor:.3f} s wall, {floor_cpu:.3f} s CPU)", flush=True)
    behaviour = progress_behaviour()
    rows.append(result_row("cli_progress_deid_dicom", radplan=float(behaviour["bar_drawn_on_terminal"]),
                           peer=float(behaviour["pipe_free_of_bars_and_terminal_codes"]), unit="checks passed (1 = yes)",
                           ratio=1.0, runs=1, **behaviour))
    print(json.dumps(behaviour, indent=2))
    path = write_results("cli.json", rows)
    print(f"wrote {path}")
    ok = all(r.get("within_target", True) for r in rows) and behaviour["bar_drawn_on_terminal"] \
        and behaviour["pipe_stdout_is_the_json_summary"] and behaviour["pipe_free_of_bars_and_terminal_codes"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

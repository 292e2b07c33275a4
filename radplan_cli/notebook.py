"""`radplan notebook` (`make notebook`): JupyterLab on the project's notebooks, on loopback, with nothing fetched.

The kernel is the interpreter running this command (the project's ``.venv``: JupyterLab's built-in
``python3`` kernel is the interpreter that started it), and it starts in ``notebooks/``; the notebooks
find the data home through ``radplan.settings`` (``RADPLAN_HOME``, else the clone's ``.radplan/``).
JupyterLab's news feed, its update check and its PyPI extension manager are switched off: nothing
phones home.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def jupyter_command(notebook_dir: Path = NOTEBOOKS, *, port: int = 8888, open_browser: bool = True,
                    extra: list[str] | None = None) -> list[str]:
    """The JupyterLab command line (loopback only; no news, no update check, read-only extension manager)."""
    return [
        sys.executable, "-m", "jupyterlab",
        f"--ServerApp.root_dir={notebook_dir}",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        f"--ServerApp.open_browser={open_browser}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        # Containers and CI run as root, where JupyterLab refuses to start without being told.
        *(["--ServerApp.allow_root=True"] if os.geteuid() == 0 else []),
        *(extra or []),
    ]


def _notebook(args: argparse.Namespace) -> int:
    command = jupyter_command(Path(args.notebook_dir), port=args.port, open_browser=not args.no_browser,
                              extra=[a for a in args.jupyter_args if a != "--"])
    try:
        return subprocess.call(command, cwd=args.notebook_dir)
    except KeyboardInterrupt:  # Ctrl-C reaches JupyterLab too, which shuts its kernels down
        return 130


def register(subparsers) -> None:
    parser = subparsers.add_parser("notebook", help="open JupyterLab on notebooks/ with the project kernel (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8888, help="port on 127.0.0.1 (default 8888)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    parser.add_argument("--notebook-dir", default=str(NOTEBOOKS), help="folder shown in JupyterLab (default notebooks/)")
    parser.add_argument("jupyter_args", nargs=argparse.REMAINDER, help="after --: more JupyterLab options")
    # JupyterLab draws its own log; a spinner would write over it.
    parser.set_defaults(func=_notebook, progress_display=False)

"""A real Orthanc (Debian package) on loopback for tests, fed by dcmtk's storescu like a modality."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests

STORESCU_AET = "RADPLANTEST"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OrthancServer:
    """Orthanc with its own storage folder and config; HTTP only from loopback, DICOM stores only from our AET on loopback."""

    def __init__(self, folder: Path, *, stable_age_s: int = 1):
        self.folder = folder
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.process: subprocess.Popen | None = None
        self.stable_age_s = stable_age_s
        (folder / "storage").mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "orthanc.json"
        self.config_path.write_text(
            json.dumps(
                {
                    "Name": "radplan-test",
                    "StorageDirectory": str(folder / "storage"),
                    "IndexDirectory": str(folder / "storage"),
                    "HttpPort": self.http_port,
                    "DicomPort": self.dicom_port,
                    "DicomAet": "ORTHANC",
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "DicomAlwaysAllowStore": False,
                    "DicomCheckModalityHost": True,
                    # The port is where Orthanc would reach the modality; radplan never asks it to.
                    "DicomModalities": {"radplantest": [STORESCU_AET, "127.0.0.1", 104]},
                    "StableAge": stable_age_s,
                    "Plugins": [],
                    "HttpDescribeErrors": True,
                }
            )
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 30) -> "OrthancServer":
        binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        self.process = subprocess.Popen(
            [binary, str(self.config_path)], stdout=(self.folder / "orthanc.log").open("ab"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                time.sleep(0.2)
        raise TimeoutError("Orthanc did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def store(self, paths: list[Path]) -> None:
        """Send files with storescu, the way a modality pushes a study (-R: propose only the files' SOP classes;
        storescu's default list lacks Segmentation Storage)."""
        subprocess.run(
            ["storescu", "-R", "-aet", STORESCU_AET, "-aec", "ORTHANC", "127.0.0.1", str(self.dicom_port), *map(str, paths)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def store_copy(self, template, **elements) -> str:
        """A copy of the pydicom dataset ``template`` with a new SOP Instance UID and ``elements`` set (e.g. a study's
        UIDs), stored through the REST API; Orthanc's id of the instance."""
        import io

        from pydicom.uid import generate_uid

        dataset = template.copy()
        for keyword, value in elements.items():
            setattr(dataset, keyword, value)
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buffer = io.BytesIO()
        dataset.save_as(buffer)
        answer = requests.post(f"{self.url}/instances", data=buffer.getvalue(), timeout=60)
        answer.raise_for_status()
        return answer.json()["ID"]

"""Running federated jobs on NVIDIA FLARE: its server and one client process per site, on this machine.

:class:`FlareDeployment` provisions a FLARE project (the engine's POC provisioning: a server, one client per
site, an admin identity, each with its own certificates; every connection is mutual TLS with those
certificates), points every startup kit at 127.0.0.1 on a free port (so the server listens on loopback only),
starts the server and client processes with FLARE's own start scripts, waits until every site has connected,
and stops them on exit. :meth:`FlareDeployment.run`
submits a job (the :class:`radplan.federated.flare_server.RadplanFedAvg` controller, and
:mod:`radplan.federated.site_script` at each site with that site's own lake folder), waits for it and
downloads what the server kept (:class:`FederatedRun`).

Site lake folders are handed to each client as a path on its own machine; here every site runs on this
host, in its own process, reading only its own folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from radplan import settings
from radplan.federated import flare_server

LOGGER = logging.getLogger(__name__)
ADMIN_USER = "admin@nvidia.com"  # the admin identity FLARE's POC provisioning creates
CODE_ROOT = Path(__file__).resolve().parents[2]
SITE_SCRIPT = Path(__file__).resolve().with_name("site_script.py")


# A segmentation round trains a 3D network at every site on CPU: minutes, not the response model's seconds.
SEGMENTATION_ROUND_TIMING = {"round_timeout_s": 3600, "grace_s": 120}


@dataclass(frozen=True)
class FederatedJobConfig:
    num_rounds: int = 2
    min_sites: int = 2
    round_timeout_s: int = 120
    grace_s: int = 10
    fedprox_mu: float = 0.0
    server_momentum: float = 0.0  # FedAvgM's momentum on the server (0: plain FedAvg), aggregation.ServerMomentum
    server_learning_rate: float = 1.0  # the server's step along the averaged update (1: plain FedAvg)
    local_epochs: int = 5
    learning_rate: float = 0.1
    batch_size: int = 32
    dp_noise_multiplier: float = 0.0
    dp_max_grad_norm: float = 1.0
    dp_delta: float = 1e-5
    seed: int = 0
    faults: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)  # site -> (fault, rounds), see flare_client
    # Homomorphic encryption of every update (radplan.federated.secure_aggregation): the server averages ciphertexts and
    # never holds a key that decrypts them. Needs a deployment provisioned with it (FlareDeployment(secure_aggregation=True)).
    secure_aggregation: bool = False
    model: str = "response"  # or "segmentation" (the lesion segmentation network on the sites' CT images)
    # segmentation only: overrides of the CPU recipe's fields (SegmentationTrainingConfig), the same at the server and
    # every site, e.g. a smaller network and crops for a quick run
    segmentation_recipe: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The segmentation sites run neither DP-SGD nor the fault injection: refused rather than silently ignored.
        if self.model not in ("response", "segmentation"):
            raise ValueError(f"unknown model {self.model!r} (response or segmentation)")
        if self.model == "segmentation" and (self.dp_noise_multiplier or self.faults):
            raise ValueError("dp_noise_multiplier and faults apply to the response model only (the segmentation sites do not run them)")
        if self.model == "response" and self.segmentation_recipe:
            raise ValueError("segmentation_recipe applies to the segmentation model only")
        if self.secure_aggregation:
            from radplan.federated.secure_aggregation import unsupported_settings

            unsupported = unsupported_settings(self.server_momentum, self.server_learning_rate)
            if unsupported:
                raise ValueError(f"secure_aggregation: {unsupported}")
        if self.segmentation_recipe:  # a bad field fails here, not later inside the server's and sites' processes
            from radplan.federated.segmentation_site import federated_segmentation_config

            federated_segmentation_config(**self.segmentation_recipe)

    def site_arguments(self, site: str, site_dir: Path) -> str:
        arguments = ["--site-dir", str(site_dir), "--local-epochs", str(self.local_epochs), "--learning-rate", str(self.learning_rate),
                     "--batch-size", str(self.batch_size), "--dp-noise-multiplier", str(self.dp_noise_multiplier),
                     "--dp-max-grad-norm", str(self.dp_max_grad_norm), "--dp-delta", str(self.dp_delta), "--seed", str(self.seed), "--model", self.model]
        if self.segmentation_recipe:
            arguments += ["--segmentation-recipe", json.dumps(self.segmentation_recipe, sort_keys=True, separators=(",", ":"))]
        if site in self.faults:
            fault, rounds = self.faults[site]
            arguments += ["--fault", fault, "--fault-rounds", ",".join(str(r) for r in rounds)]
        # FLARE's script runner splits the arguments on whitespace and passes quotes and backslashes on as they are.
        unfit = [a for a in arguments if not a or any(c.isspace() or c in "'\\" for c in a)]
        if unfit:
            raise ValueError(f"site arguments {unfit} contain whitespace, a single quote or a backslash: FLARE splits "
                             "a site's arguments on whitespace and does not unquote them (a site folder path with a space cannot be passed)")
        return " ".join(arguments)


@dataclass
class FederatedRun:
    """What the server kept of one job, read back from the downloaded server workspace."""

    job_id: str
    job_status: str
    summary: dict[str, Any]
    events: list[dict[str, Any]]
    global_parameters: dict[str, np.ndarray] | None
    server_files: Path

    @property
    def complete(self) -> bool:
        return self.summary.get("status") == "complete" and self.global_parameters is not None and self.job_status.startswith("FINISHED:COMPLETED")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class FlareDeployment:
    """A running FLARE project (server + one client per site) in ``workspace``; use as a context manager."""

    def __init__(self, workspace: str | Path, sites: list[str], connect_timeout_s: float = 120.0, secure_aggregation: bool = False) -> None:
        self.workspace = Path(workspace).resolve()
        self.sites = list(sites)
        self.connect_timeout_s = connect_timeout_s
        # FLARE's HE provisioning (HEBuilder): a TenSEAL CKKS context in every kit, the secret key only in the sites'
        self.secure_aggregation = secure_aggregation

    def __enter__(self) -> "FlareDeployment":
        from nvflare.tool.poc.poc_commands import _start_poc, prepare_poc_provision

        settings.federated_engine_environment(self.workspace, CODE_ROOT)
        self.workspace.mkdir(parents=True, exist_ok=True)
        prepare_poc_provision(clients=self.sites, number_of_clients=len(self.sites), workspace=str(self.workspace),
                              docker_image=None, use_he=False, project_conf_path=str(self._project_file()), examples_dir=None)
        self._loopback_only()
        try:
            _start_poc(poc_workspace=str(self.workspace), gpu_ids=[], excluded=[ADMIN_USER], services_list=[])
            self._wait_for_sites()
        except BaseException:
            self.stop()
            raise
        return self

    def _project_file(self) -> Path:
        """FLARE's default POC project with these sites as clients and a free port (not the fixed 8002)."""
        from nvflare.tool.poc.poc_commands import (add_he_builder, gen_project_config_file, load_yaml, save_project_config, update_clients,
                                                   update_server_name)

        config = update_clients(self.sites, len(self.sites), update_server_name(load_yaml(gen_project_config_file(str(self.workspace)))))
        # FLARE adds HEBuilder only to its own project file; this one is handed in as the user's
        config = add_he_builder(self.secure_aggregation, config)
        server = next(p for p in config["participants"] if p["type"] == "server")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = server["fed_learn_port"] = probe.getsockname()[1]
        project_file = self.workspace / "radplan_project.yml"
        save_project_config(config, str(project_file))
        return project_file

    def _loopback_only(self) -> None:
        """Point every startup kit at 127.0.0.1:<port>. FLARE's server binds its listener to the host of its service
        target when that host is a loopback address, and to every interface otherwise (the provisioned target is
        ``server:<port>``). Plain POC kits carry no signature manifest, and HE kits are signed again after the edit,
        so the result is what provisioning with that host would have written."""
        for config_file in self.workspace.glob("*/prod_00/*/startup/fed_*.json"):
            config = json.loads(config_file.read_text())
            text = json.dumps(config, indent=2)
            for host in ("server", "localhost"):
                text = text.replace(f'"{host}:{self.port}"', f'"127.0.0.1:{self.port}"')
            config = json.loads(text)
            for server in config.get("servers", []):
                if server.get("admin_server") in ("server", "localhost"):
                    server["admin_server"] = "127.0.0.1"
            admin = config.get("admin", {})
            if admin.get("host") in ("server", "localhost"):
                admin["host"] = "127.0.0.1"
            config_file.write_text(json.dumps(config, indent=2))
            if (config_file.parent / "signature.json").exists():
                self._sign_again(config_file.parent)

    def _sign_again(self, startup: Path) -> None:
        """Sign an edited startup folder again with the project's root key, as provisioning signed it. FLARE signs the
        kits of an HE project (so that the TenSEAL contexts load in secure mode) and refuses to start from an edited,
        unsigned configuration."""
        from nvflare.lighter.utils import load_private_key, sign_folders

        state = json.loads(next(self.workspace.glob("*/state/cert.json")).read_text())
        sign_folders(str(startup), load_private_key(state["root_pri_key"]), signature_file="signature.json")

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _kit(self, participant: str) -> Path:
        """The startup kit folder FLARE provisioned for ``participant`` (a site, ``server`` or the admin)."""
        from nvflare.tool.poc.poc_commands import get_prod_dir, setup_service_config

        project_config, _ = setup_service_config(str(self.workspace))
        return Path(get_prod_dir(str(self.workspace), project_config.get("name"))) / participant

    def _admin_kit(self) -> str:
        return str(self._kit(ADMIN_USER))

    def he_context_file(self, participant: str) -> Path:
        """The TenSEAL context HE provisioning gave ``participant``: a site's holds the secret key, the server's not."""
        from radplan.federated.secure_aggregation import CLIENT_CONTEXT_FILE, SERVER_CONTEXT_FILE

        if not self.secure_aggregation:
            raise ValueError("this FLARE deployment was provisioned without secure aggregation (no HE contexts)")
        return self._kit(participant) / "startup" / (SERVER_CONTEXT_FILE if participant == "server" else CLIENT_CONTEXT_FILE)

    @contextmanager
    def session(self) -> Iterator[Any]:
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        session = new_secure_session(username=ADMIN_USER, startup_kit_location=self._admin_kit(), timeout=30)
        try:
            yield session
        finally:
            session.close()

    def _wait_for_sites(self) -> None:
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                with self.session() as session:
                    connected = {client.name for client in session.get_connected_client_list()}
            except Exception:  # the server is still starting
                connected = set()
            if set(self.sites) <= connected:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"FLARE sites {sorted(set(self.sites) - connected)} did not connect within {self.connect_timeout_s:.0f} s")
            time.sleep(0.5)

    def stop(self, wait_s: float = 180.0) -> None:
        """Ask FLARE to shut its processes down and wait until they are gone (a loaded machine can take minutes)."""
        from nvflare.tool.poc.poc_commands import _stop_poc, is_poc_running, setup_service_config

        try:
            project_config, service_config = setup_service_config(str(self.workspace))
        except Exception:
            return
        try:
            _stop_poc(poc_workspace=str(self.workspace), excluded=[ADMIN_USER], services_list=[])
        except TimeoutError as error:  # FLARE's own 30 s wait for the server; keep waiting below
            LOGGER.warning("FLARE shutdown still in progress in %s: %s", self.workspace, error)
        deadline = time.monotonic() + wait_s
        while is_poc_running(str(self.workspace), service_config, project_config):
            if time.monotonic() > deadline:
                raise RuntimeError(f"FLARE processes of {self.workspace} still running {wait_s:.0f} s after shutdown was requested")
            time.sleep(0.5)

    def run(self, site_dirs: dict[str, Path], config: FederatedJobConfig, job_name: str = "radplan-fedavg",
            timeout_s: float = 600.0, champion_parameters: dict[str, np.ndarray] | None = None) -> FederatedRun:
        """Submit one job over ``site_dirs`` (site name -> its lake folder), wait for it, read what the server kept."""
        from nvflare.fuel.flare_api.flare_api import MonitorReturnCode
        from nvflare.fuel.utils.constants import FrameworkType
        from nvflare.job_config.api import FedJob
        from nvflare.job_config.script_runner import ScriptRunner

        unknown = sorted(set(site_dirs) - set(self.sites))
        if unknown:
            raise ValueError(f"sites {unknown} are not part of this FLARE deployment ({self.sites})")
        if config.secure_aggregation and not self.secure_aggregation:
            raise ValueError("secure_aggregation needs a deployment provisioned for it: FlareDeployment(..., secure_aggregation=True)")
        job = FedJob(name=job_name, min_clients=len(site_dirs))
        job.to_server(flare_server.RadplanFedAvg(num_rounds=config.num_rounds, min_sites=config.min_sites,
                                                 round_timeout_s=config.round_timeout_s, grace_s=config.grace_s,
                                                 fedprox_mu=config.fedprox_mu, model_kind=config.model, seed=config.seed,
                                                 server_momentum=config.server_momentum, server_learning_rate=config.server_learning_rate,
                                                 segmentation_recipe=config.segmentation_recipe,
                                                 secure_aggregation=config.secure_aggregation,
                                                 champion_parameters=None if champion_parameters is None else
                                                 {k: np.asarray(v).tolist() for k, v in champion_parameters.items()}))
        for site, site_dir in site_dirs.items():
            job.to(ScriptRunner(script=str(SITE_SCRIPT), script_args=config.site_arguments(site, Path(site_dir).resolve()),
                                framework=FrameworkType.NUMPY), site)
            if config.secure_aggregation:
                from radplan.federated.secure_aggregation import add_site_filters

                add_site_filters(job, site)
        with tempfile.TemporaryDirectory() as exported, self.session() as session:
            job.export_job(exported)
            job_id = session.submit_job(str(Path(exported) / job_name))
            returned, job_meta = session.monitor_job_and_return_job_meta(job_id, timeout=timeout_s, poll_interval=0.5)
            if returned != MonitorReturnCode.JOB_FINISHED:
                session.abort_job(job_id)
                raise TimeoutError(f"federated job {job_id} did not finish within {timeout_s:.0f} s")
            job_status = str(job_meta.get("status", ""))
            downloaded = Path(session.download_job_result(job_id))
        server_files = downloaded / "workspace"
        summary_path = server_files / flare_server.SUMMARY_FILE
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"status": "incomplete", "reason": f"{summary_path} missing"}
        model_path = server_files / flare_server.GLOBAL_MODEL_FILE
        global_parameters = None
        if config.secure_aggregation:
            # The server kept ciphertexts only; the model is decrypted here with a site's key, as the hospital that runs
            # the pipeline (one of the sites) would.
            from radplan.federated.secure_aggregation import ENCRYPTED_GLOBAL_MODEL_FILE, decrypt_global_model

            encrypted_path = server_files / ENCRYPTED_GLOBAL_MODEL_FILE
            if encrypted_path.exists() and summary.get("status") == "complete":
                global_parameters = decrypt_global_model(encrypted_path, self.he_context_file(next(iter(site_dirs))),
                                                         summary["parameter_shapes"])
        elif model_path.exists() and summary.get("status") == "complete":
            with np.load(model_path) as stored:
                global_parameters = {name: stored[name] for name in stored.files}
        return FederatedRun(job_id, job_status, summary, _read_jsonl(server_files / flare_server.EVENTS_FILE), global_parameters, server_files)


def server_process_files(deployment: FlareDeployment) -> list[Path]:
    """Every file of the server's own folder (its logs, job workspaces, stored jobs): what the server keeps."""
    from nvflare.tool.poc.poc_commands import get_prod_dir, setup_service_config

    project_config, _ = setup_service_config(str(deployment.workspace))
    server_dir = Path(get_prod_dir(str(deployment.workspace), project_config.get("name"))) / "server"
    return [p for p in server_dir.rglob("*") if p.is_file()]


def remove_workspace(workspace: str | Path) -> None:
    shutil.rmtree(workspace, ignore_errors=True)

"""One federated training run end to end: site lakes, the FLARE deployment, MLflow logging and registration.

Used by the ``federated_response_model`` and ``federated_segmentation_model`` Dagster assets and by ``radplan
federated-demo``. The synthetic site lakes are written once under ``work_dir/sites`` (with CT images for the
segmentation network: ``work_dir/segmentation-sites``; a real deployment has each hospital's own lake instead);
FLARE's provisioned workspace lives in ``work_dir/flare`` for the run and is removed afterwards (its job
results have been read back). Returns a PHI-free summary: status, rounds, per-site counts and metrics, events,
registration.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from radplan.federated.engine import FederatedJobConfig, FlareDeployment
from radplan.federated.flare_server import initial_parameters
from radplan.federated.reporting import MODEL_KINDS, champion_parameters, log_and_register
from radplan.federated.sites import SITE_FILE, SiteSpec, default_site_specs, write_site_lakes

# Segmentation sites hold out a quarter of their patients (at least one) for scoring the global and champion models.
SEGMENTATION_HELD_OUT_FRACTION = 0.25


def synthetic_sites(work_dir: Path, sizes: tuple[int, ...], model: str = "response") -> dict[str, Path]:
    """The site lakes under ``work_dir/<model>-sites``, written when missing (same sizes: reused); for the
    segmentation network with each patient's CT rendered at the site's scanner settings."""
    specs = default_site_specs(sizes)
    root = work_dir / "sites" if model == "response" else work_dir / f"{model}-sites"
    if model == "segmentation":
        from radplan.federated.segmentation_site import PAIRS_FILE, write_site_images

        specs = [SiteSpec(**{**spec.__dict__, "n_held_out": max(1, round(spec.n_patients * SEGMENTATION_HELD_OUT_FRACTION))})
                 for spec in specs]
    existing = {spec.name: root / spec.name for spec in specs}
    if all((path / SITE_FILE).exists() and json.loads((path / SITE_FILE).read_text())["n_patients"] == spec.n_patients
           and (model == "response" or (path / PAIRS_FILE).exists()) for spec, path in zip(specs, existing.values())):
        return existing
    site_dirs = write_site_lakes(specs, root)
    if model == "segmentation":
        for spec in specs:
            write_site_images(spec, site_dirs[spec.name])
    return site_dirs


def run_federated_training(work_dir: Path, *, tracking_uri: str, artifact_root: Path, sizes: tuple[int, ...] = (120, 80, 50),
                           config: FederatedJobConfig = FederatedJobConfig(num_rounds=5, local_epochs=2, min_sites=2),
                           model_name: str | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda message: None)
    work_dir = Path(work_dir)
    model_name = model_name or MODEL_KINDS[config.model]["name"]
    metric = MODEL_KINDS[config.model]["metric"]
    site_dirs = synthetic_sites(work_dir, sizes, config.model)
    say(f"{len(site_dirs)} site lakes under {next(iter(site_dirs.values())).parent} "
        f"({', '.join(f'{n}: {s}' for n, s in zip(site_dirs, sizes))} patients)")
    champion = champion_parameters(tracking_uri, artifact_root, model_name)
    if champion is not None:
        start = initial_parameters(config.model, config.seed, config.segmentation_recipe)
        if {k: v.shape for k, v in champion.items()} != {k: v.shape for k, v in start.items()}:
            # A champion of another architecture (another segmentation recipe) cannot be scored by the sites beside this model.
            say(f"the registered {model_name} champion has another architecture: the sites score only the new model")
            champion = None
    flare_dir = work_dir / "flare"
    shutil.rmtree(flare_dir, ignore_errors=True)
    try:
        with FlareDeployment(flare_dir, list(site_dirs), secure_aggregation=config.secure_aggregation) as deployment:
            say(f"FLARE server and {len(site_dirs)} site processes running on 127.0.0.1; {config.num_rounds} rounds"
                + ("; updates encrypted (CKKS), the server averages ciphertexts" if config.secure_aggregation else ""))
            run = deployment.run(site_dirs, config, job_name=f"radplan-{config.model}-fedavg", champion_parameters=champion,
                                 timeout_s=600.0 if config.model == "response" else 7200.0)
        outcome = log_and_register(run, config, tracking_uri=tracking_uri, artifact_root=artifact_root, model_name=model_name)
    finally:
        shutil.rmtree(flare_dir, ignore_errors=True)
    say(f"run {run.summary.get('status')}; " + (f"registered {model_name} v{outcome['registration']['version']} as {outcome['registration']['alias']}"
                                                  if outcome["registered"] else f"nothing registered ({outcome['reason']})"))
    return {"status": run.summary.get("status"), "reason": run.summary.get("reason", ""), "job_status": run.job_status,
            "config": {k: v for k, v in asdict(config).items() if k != "faults"}, "sites": dict(zip(site_dirs, sizes)),
            "rounds": run.summary.get("rounds", []), "evaluation": run.summary.get("evaluation", {}), "events": run.events,
            "registered": outcome["registered"], "registration": outcome.get("registration"), "model_name": model_name,
            "held_out_metric": metric, f"held_out_{metric}": outcome.get(f"held_out_{metric}"), "mlflow_run_id": outcome["run_id"]}

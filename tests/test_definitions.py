"""The code location loads, validates with Dagster's own CLI, and every asset is documented and grouped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DOMAIN_GROUPS = {"ingest", "imaging", "genomics", "ehr", "cohort", "models", "decision"}


def test_dagster_definitions_validate(tmp_path):
    env = {**os.environ, "RADPLAN_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path / "dagster_home"), "RADPLAN_DEMO": "1"}
    (tmp_path / "dagster_home").mkdir()
    result = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_every_asset_has_a_domain_group_and_a_description():
    from definitions import defs

    graph = defs.resolve_asset_graph()
    groups = set()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.group_name in DOMAIN_GROUPS, f"{key.to_user_string()} has group {node.group_name}"
        assert node.description and len(node.description) > 40, f"{key.to_user_string()} lacks a description"
        groups.add(node.group_name)
    assert groups == DOMAIN_GROUPS


def test_per_patient_assets_share_one_dynamic_partitioning():
    from definitions import defs
    from radplan_assets.partitions import patient_partitions

    graph = defs.resolve_asset_graph()
    partitioned = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).partitions_def is not None}
    assert {"pacs_studies", "deid_studies", "variants", "deid_ehr", "deid_notes", "patient_features", "patient_recommendations"} <= partitioned
    assert all(graph.get(k).partitions_def == patient_partitions for k in graph.get_all_asset_keys() if graph.get(k).partitions_def)


def test_each_input_source_reruns_its_own_branch_of_the_patient_assets():
    from dagster import AssetKey

    from definitions import defs
    from jobs import PATIENT_ASSETS, SOURCE_ROOT_ASSETS, refresh_selection
    from radplan.inventory import INPUT_SOURCES

    graph = defs.resolve_asset_graph()
    patient_assets = PATIENT_ASSETS.resolve(graph)
    assert set(SOURCE_ROOT_ASSETS) == set(INPUT_SOURCES)
    # Every per-patient asset that reads the inventory is the root of a source: otherwise a change would not rerun it.
    readers = {key.to_user_string() for key in patient_assets if AssetKey("landing_inventory") in graph.get(key).parent_keys}
    assert readers == {root for roots in SOURCE_ROOT_ASSETS.values() for root in roots}
    branches = {source: {key.to_user_string() for key in refresh_selection([source]).resolve(graph)} for source in INPUT_SOURCES}
    assert set().union(*branches.values()) == {key.to_user_string() for key in patient_assets}
    joined = {"patient_features", "patient_recommendations"}
    assert all(joined <= branch for branch in branches.values())
    assert {"pacs_studies", "deid_studies", "radiomic_features", "predicted_lesion_masks"} <= branches["imaging"]
    assert not branches["imaging"] & {"ehr_extracts", "deid_notes", "deid_ehr", "raw_genomics", "variants", "pgx_phenotypes"}
    assert not branches["genomics"] & {"ehr_extracts", "deid_notes", "deid_studies", "radiomic_features"}
    # The EHR feeds the tumour type that variant annotation reads, so EHR changes re-annotate the variants.
    assert {"deid_notes", "clinical_features", "annotated_variants"} <= branches["ehr"]
    assert not branches["ehr"] & {"deid_studies", "radiomic_features", "variants", "raw_genomics"}


def test_instance_config_disables_telemetry(tmp_path, monkeypatch):
    from radplan_resources.instance import ensure_dagster_home

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    folder = ensure_dagster_home(tmp_path)
    assert yaml.safe_load((folder / "dagster.yaml").read_text())["telemetry"]["enabled"] is False
    assert os.environ["DAGSTER_HOME"] == str(folder)


def test_workspace_points_at_the_single_definitions_module():
    workspace = yaml.safe_load((REPO_ROOT / "workspace.yaml").read_text())
    assert workspace["load_from"] == [{"python_module": {"module_name": "definitions", "location_name": "radplan"}}]


# Every run process the daemon launches imports the code location before it runs a step: loading definitions must
# not import the libraries only some assets need (they took ~8 of its ~11 s; benchmarks/bench_operations.py).
HEAVY_AT_RUN_TIME = {"torch", "monai", "lightning", "pytorch_lightning", "presidio_analyzer", "spacy", "mlflow", "nvflare",
                     "sklearn", "matplotlib", "onnxruntime", "dagster_aws", "highdicom"}
IMPORT_DEFINITIONS = "import json, sys, definitions; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"


def test_loading_the_definitions_imports_no_model_or_nlp_library(tmp_path):
    env = {**os.environ, "RADPLAN_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path / "dagster_home"), "RADPLAN_DEMO": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", IMPORT_DEFINITIONS], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert {"dagster", "definitions", "radplan_assets", "pandas"} <= imported  # the list really is the process's modules
    assert imported & HEAVY_AT_RUN_TIME == set()


def test_the_pacs_return_config_default_is_the_onnx_modules():
    # Spelled out in the asset module so that loading definitions imports no torch; it must not drift. Read from the
    # source: importing radplan.models.segmentation_onnx here would cost this test seconds of torch import.
    import ast

    from radplan_assets.pacs_return import ONNX_DEFAULT_THREADS, PacsSegmentationConfig

    tree = ast.parse((REPO_ROOT / "radplan" / "models" / "segmentation_onnx.py").read_text())
    (library_default,) = [ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                          and any(isinstance(t, ast.Name) and t.id == "DEFAULT_THREADS" for t in node.targets)]
    assert ONNX_DEFAULT_THREADS == library_default == PacsSegmentationConfig().onnx_threads

"""The layering the architecture promises, checked on the source: imports go down, settings are read in one place,
asset inputs are declared once, and docs/architecture.md is what the Definitions produce."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ORCHESTRATION = ("dagster", "dagster_aws", "dagster_pyspark", "dagster_mlflow", "dagster_postgres",
                 "definitions", "radplan_assets", "radplan_resources", "jobs", "sensors", "radplan_cli")
PRODUCT_PACKAGES = ("radplan", "radplan_assets", "radplan_resources", "radplan_cli", "radplan_dashboard", "jobs", "sensors")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (REPO / package).rglob("*.py"))


def test_the_science_library_never_imports_the_orchestration_layer():
    offenders = {str(p.relative_to(REPO)): sorted(_imports(p) & set(ORCHESTRATION)) for p in _sources("radplan")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_dashboard_is_a_client_of_the_science_library_only():
    offenders = {str(p.relative_to(REPO)): sorted(_imports(p) & set(ORCHESTRATION)) for p in _sources("radplan_dashboard")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_orchestration_layer_never_imports_its_clients():
    offenders = {str(p.relative_to(REPO)): sorted(_imports(p) & {"radplan_cli", "radplan_dashboard"})
                 for p in _sources("radplan_assets", "radplan_resources", "jobs", "sensors") + [REPO / "definitions.py"]}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_environment_is_read_in_the_settings_module_only():
    pattern = re.compile(r"\bos\.environ\b|\bgetenv\(|\bos\.putenv\(")
    readers = sorted(str(p.relative_to(REPO)) for p in _sources(*PRODUCT_PACKAGES) + [REPO / "definitions.py"]
                     if pattern.search(p.read_text(encoding="utf-8")))
    assert readers == ["radplan/settings.py"]


def test_no_asset_reads_another_assets_table_by_name():
    # Inputs are parameters loaded by the lake IO manager; a table read by string name would bypass the graph.
    calls = [f"{p.relative_to(REPO)}:{n}" for p in _sources("radplan_assets")
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"\.(read_table|read_table_if_present|has_table|partition_dir)\(", line)]
    assert calls == []


def test_every_lake_layout_entry_names_a_real_asset():
    from definitions import defs
    from radplan_resources.io_manager import FILE_PRODUCTS, LAKE_LAYOUT

    names = {key.path[-1] for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert set(LAKE_LAYOUT) <= names and set(FILE_PRODUCTS) <= names


def test_architecture_doc_is_generated_from_the_definitions():
    from definitions import defs
    from radplan_cli.architecture import DOC, generated_section, render

    committed = DOC.read_text(encoding="utf-8")
    assert committed == render(committed, generated_section(defs)), "docs/architecture.md is stale: run `radplan architecture-doc`"

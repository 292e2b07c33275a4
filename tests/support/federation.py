"""Tiny federated site lakes for the engine tests: what both the plain and the secure-aggregation deployments train on."""

from __future__ import annotations

from pathlib import Path

import psutil

from radplan.federated.segmentation_site import write_site_images
from radplan.federated.sites import SiteSpec, default_site_specs, write_site_lakes

SITES = ("site-1", "site-2", "site-3", "site-4")
# A network and crops small enough for seconds per round on CPU (the benchmark trains the full CPU recipe).
SMALL_SEGMENTATION_RECIPE = {"roi_size": [24, 24, 16], "samples_per_volume": 2, "batch_size": 2, "channels": [4, 8, 16, 32]}


def tiny_sites(root: Path) -> dict:
    """Three response sites of 16, 14 and 12 patients and site-4 with none eligible; three segmentation sites of three
    patients with CT images, one held out each."""
    specs = default_site_specs((16, 14, 12))
    specs.append(SiteSpec("site-4", 0, 9901))  # a hospital with no eligible patient
    site_dirs = write_site_lakes(specs, root / "sites")
    segmentation_specs = [SiteSpec(**{**spec.__dict__, "n_held_out": 1}) for spec in default_site_specs((3, 3, 3), base_seed=7300)]
    segmentation_dirs = write_site_lakes(segmentation_specs, root / "segmentation-sites")
    for spec in segmentation_specs:
        write_site_images(spec, segmentation_dirs[spec.name])
    return {"specs": specs, "site_dirs": site_dirs, "segmentation_specs": segmentation_specs, "segmentation_dirs": segmentation_dirs}


def listening_addresses(port: int) -> list[str]:
    """The addresses a TCP listener on ``port`` is bound to (the engine's server: 127.0.0.1 only)."""
    return sorted({c.laddr.ip for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port})

"""Lesion segmentation quality on held-out synthetic patients, trained on 2 CPU threads within a CPU-time budget.

Cohort (benchmarks/seg_cohort.py): the generator's CT phantom and lesions (radplan.synth), normalised and
resampled to 1.5 mm by the pipeline's own functions. Training patients and held-out patients are disjoint
patient indices of one cohort seed; every study of a patient goes to the same side.

Training is the asset's code path: ``radplan.models.segmentation.train_segmentation`` with the CPU default
config (``SegmentationTrainingConfig.for_device(False)``), MLflow in a temporary sqlite store, torch limited
to 2 threads, ``max_train_cpu_seconds`` = minutes x 60 x threads (what a dedicated machine gives in that
time; the fit stops there even if epochs remain) and ``max_train_seconds`` = a wall-clock cap for a shared
machine. Its own validation split (``val_fraction``) holds out whole training patients.

Evaluation on the held-out images: sliding-window inference + post-processing (``postprocess_mask``), then
- per image: Dice and HD95 (mm) of all lesions together (MONAI ``compute_dice`` / ``compute_hausdorff_distance``),
  and where Dice is lost (``detection``: voxel precision and recall, missed lesions, false-positive components);
- per lesion: ``lesion_metrics`` (predicted voxels attributed to the nearest true lesion), grouped by the
  lesion's site as the generator drew it (``Lesion.site``: "lung" or "soft_tissue"; there is no finer
  organ notion in radplan.synth). A study may hold lesions of both sites, so sites are a per-lesion notion.
95% CIs: percentile bootstrap (1000 resamples) over held-out patients (cluster bootstrap: a patient's
studies and lesions are resampled together). HD95 is undefined for a missed lesion (empty prediction near
it): such cases are counted in ``n_undefined``, not given a distance.

Writes benchmarks/results/segmentation.json. Usage:
    python benchmarks/bench_segmentation.py [--train-patients 80] [--held-out-patients 30] [--minutes 15] [--seed 20261206]
The machine is shared: the load average at start and end is recorded next to the timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402
from _common import QUICK, load_average, machine, now, write_results  # noqa: E402
from seg_cohort import build_cohort  # noqa: E402

from radplan.models import registry  # noqa: E402
from radplan.models.segmentation import (  # noqa: E402
    SegmentationTrainingConfig,
    bootstrap_mean_ci,
    lesion_metrics,
    overlap_metrics,
    predicted_and_true_masks,
    train_segmentation,
)

TARGET_DICE = 0.85
HELD_OUT_OFFSET = 10_000  # held-out patient indices start here: disjoint from the training patients


def _summary(values, clusters) -> dict:
    return bootstrap_mean_ci(values, clusters, n_bootstrap=1000, seed=0)


def detection(prediction: np.ndarray, truth: np.ndarray) -> dict:
    """Where the Dice is lost in one image: voxel precision and recall, true lesions without a predicted voxel, and
    predicted components (26-connectivity) that touch no true lesion."""
    predicted, expected = prediction != 0, truth != 0
    overlap = int((predicted & expected).sum())
    components, count = ndimage.label(predicted, structure=np.ones((3, 3, 3), dtype=bool))
    touching = set(np.unique(components[expected]).tolist()) - {0}
    lesions = [int(v) for v in np.unique(truth) if v > 0]
    return {"precision": overlap / predicted.sum() if predicted.any() else float("nan"),
            "recall": overlap / expected.sum() if expected.any() else float("nan"),
            "lesion_voxels": int(expected.sum()), "lesions": len(lesions), "missed_lesions": sum(1 for v in lesions if not predicted[truth == v].any()),
            "false_positive_components": count - len(touching),
            "false_positive_voxels": int(np.isin(components, [c for c in range(1, count + 1) if c not in touching]).sum())}


def evaluate(network, records: list[dict], config: SegmentationTrainingConfig) -> dict:
    pairs = [(r["image"], r["label"]) for r in records]
    per_image, per_lesion = [], []
    for record, (prediction, truth, spacing) in zip(records, predicted_and_true_masks(network, pairs, config)):
        per_image.append({"patient": record["patient"], **overlap_metrics(prediction, truth, spacing), **detection(prediction, truth)})
        for lesion, scores in lesion_metrics(prediction, truth, spacing).items():
            per_lesion.append({"patient": record["patient"], "site": record["sites"][str(lesion)], **scores})
    images = {"dice": _summary([r["dice"] for r in per_image], [r["patient"] for r in per_image]),
              "hd95_mm": _summary([r["hd95_mm"] for r in per_image], [r["patient"] for r in per_image]),
              "detection": {"voxel_precision": _summary([r["precision"] for r in per_image], [r["patient"] for r in per_image]),
                            "voxel_recall": _summary([r["recall"] for r in per_image], [r["patient"] for r in per_image]),
                            **{key: int(sum(r[key] for r in per_image)) for key in
                               ("lesions", "missed_lesions", "false_positive_components", "false_positive_voxels", "lesion_voxels")}}}
    by_site = defaultdict(list)
    for row in per_lesion:
        by_site[row["site"]].append(row)
    by_site["all"] = per_lesion
    sites = {
        site: {"lesions": len(rows), "patients": len({r["patient"] for r in rows}),
               "median_volume_mm3": float(np.median([r["volume_mm3"] for r in rows])),
               "dice": _summary([r["dice"] for r in rows], [r["patient"] for r in rows]),
               "hd95_mm": _summary([r["hd95_mm"] for r in rows], [r["patient"] for r in rows])}
        for site, rows in sorted(by_site.items())
    }
    return {"images": len(per_image), "patients": len({r["patient"] for r in per_image}), **images, "sites": sites}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-patients", type=int, default=12 if QUICK else 80)
    parser.add_argument("--held-out-patients", type=int, default=4 if QUICK else 30)
    parser.add_argument("--minutes", type=float, default=1.0 if QUICK else 15.0,
                        help="training budget as minutes of a dedicated machine with --threads cores (minutes x 60 x threads CPU seconds)")
    parser.add_argument("--max-wall-minutes", type=float, default=2.0 if QUICK else 30.0,
                        help="wall-clock cap on the fit, for a machine shared with other jobs")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="training patients' images kept for train_segmentation's own validation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20261206)
    parser.add_argument("--data", type=Path, help="cohort folder to reuse (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_at_start = load_average()

    with tempfile.TemporaryDirectory(prefix="radplan-bench-seg-") as scratch:
        data = args.data or Path(scratch) / "data"
        started = time.perf_counter()
        train = build_cohort(data / "train", args.seed, range(0, args.train_patients))
        held_out = build_cohort(data / "held_out", args.seed, range(HELD_OUT_OFFSET, HELD_OUT_OFFSET + args.held_out_patients))
        cohort_seconds = time.perf_counter() - started

        # The budget (CPU seconds) decides when training ends; max_epochs only bounds it. No validation passes during
        # the fit: the held-out evaluation follows, and each pass costs time the budget counts.
        config = dataclasses.replace(SegmentationTrainingConfig.for_device(False), val_fraction=args.val_fraction, max_epochs=1000,
                                     val_every_n_epochs=1000, max_train_cpu_seconds=args.minutes * 60.0 * args.threads,
                                     max_train_seconds=args.max_wall_minutes * 60.0)
        tracking = Path(scratch) / "mlflow"
        started = time.perf_counter()
        summary = train_segmentation([(r["image"], r["label"]) for r in train], config, tracking_uri=f"sqlite:///{tracking}.db",
                                     artifact_root=tracking, progress=lambda line: print(line, flush=True),
                                     patients=[str(r["patient"]) for r in train])
        train_call_seconds = time.perf_counter() - started
        load_after_training = load_average()
        client = registry.mlflow_client(f"sqlite:///{tracking}.db", tracking)
        network, _ = registry.load_champion(client, summary["model_name"])
        started = time.perf_counter()
        held_out_scores = evaluate(network, held_out, config)
        evaluation_seconds = time.perf_counter() - started

    row = {
        "name": "segmentation_held_out",
        "machine": machine(), "date": now(), "quick": QUICK,
        "torch_threads": args.threads, "device": summary["device"],
        "load_average": load_at_start, "load_average_after_training": load_after_training, "load_average_end": load_average(),
        "note": "shared machine (several jobs running): the training budget is counted in CPU seconds of this process "
                "(minutes x 60 x threads, what a dedicated machine gives), wall seconds depend on the load",
        "cohort_seed": args.seed, "train_patients": args.train_patients, "train_images": summary["n_train_images"],
        "validation_images": summary["n_val_images"], "held_out_patients": args.held_out_patients,
        "cohort_seconds": round(cohort_seconds, 1),
        "budget_minutes_on_dedicated_cores": args.minutes, "train_cpu_seconds_budget": config.max_train_cpu_seconds,
        "train_wall_seconds_cap": config.max_train_seconds,
        "train_seconds": summary["train_seconds"], "train_cpu_seconds": summary["train_cpu_seconds"],
        "train_call_seconds": round(train_call_seconds, 1), "epochs": summary["epochs"], "steps": summary["steps"],
        "patches_per_step": config.batch_size * config.samples_per_volume,
        "max_epochs": config.max_epochs, "val_dice_training_split": summary["val_dice"],
        "evaluation_seconds": round(evaluation_seconds, 1),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()},
        "target_dice": TARGET_DICE,
        **held_out_scores,
    }
    row["dice_target_met"] = bool(row["dice"]["mean"] >= TARGET_DICE)
    path = write_results("segmentation.json", [row])
    print(f"held-out Dice {row['dice']['mean']:.3f} [{row['dice']['ci_low']:.3f}, {row['dice']['ci_high']:.3f}], "
          f"HD95 {row['hd95_mm']['mean']:.1f} mm, {row['epochs']} epochs in {row['train_seconds']:.0f} s -> {path}")
    found = row["detection"]
    print(f"  voxel precision {found['voxel_precision']['mean']:.3f}, recall {found['voxel_recall']['mean']:.3f}; "
          f"{found['missed_lesions']}/{found['lesions']} lesions missed; {found['false_positive_components']} false-positive "
          f"components ({found['false_positive_voxels']} voxels vs {found['lesion_voxels']} lesion voxels)")
    for site, scores in row["sites"].items():
        print(f"  {site}: {scores['lesions']} lesions, Dice {scores['dice']['mean']:.3f} [{scores['dice']['ci_low']:.3f}, "
              f"{scores['dice']['ci_high']:.3f}], HD95 {scores['hd95_mm']['mean']:.1f} mm ({scores['hd95_mm']['n_undefined']} undefined)")


if __name__ == "__main__":
    main()

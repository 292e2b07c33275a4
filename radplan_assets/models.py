"""Models: MONAI lesion segmentation (Lightning, MLflow) and its masks; the multimodal response model.

torch, MONAI, Lightning, MLflow and scikit-learn are imported inside the assets that use them: every run process
and the code server import this module, and most runs (an intake, an export) never train or infer.
"""

import dataclasses
import json

import pandas as pd
import pydicom
import SimpleITK as sitk
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from radplan.imaging import masks as mask_ops
from radplan.imaging import volumes
from radplan.imaging.series import group_series, read_instance_header
from radplan.lake import atomic_write_json
from radplan.models import outcomes
from radplan_assets.partitions import patient_partitions
from radplan_resources import DeidKeyResource, LakeResource, MlflowResource
from radplan_resources.io_manager import one_table_of, table_metadata

SEGMENTATION_MODEL_NAME = "radplan-lesion-seg"
RESPONSE_MODEL_NAME = "radplan-response"


def update_model_report(lake: LakeResource, model_key: str, entry: dict) -> None:
    """lake/exports/model_report.json: one entry per model, each asset replacing its own."""
    path = lake.zone("exports") / "model_report.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    atomic_write_json(path, {**report, model_key: entry})


def _client(mlflow_resource: MlflowResource):
    from radplan.models import registry

    return registry.mlflow_client(mlflow_resource.tracking_uri, mlflow_resource.artifact_path)


class SegmentationTrainingRunConfig(Config):
    max_epochs: int | None = None


@asset(
    group_name="models",
    description="MONAI 3-D UNet trained with PyTorch Lightning on CT volumes that have reference masks (SEG/RTSTRUCT): "
    "lesion-centred crops, Dice+CE, small components removed after sliding-window inference; held-out Dice; logged and "
    "registered in MLflow as radplan-lesion-seg, promoted to `champion` only if it beats the current champion on the same "
    "validation data.",
)
def segmentation_model(
    context: AssetExecutionContext,
    config: SegmentationTrainingRunConfig,
    normalized_volumes: pd.DataFrame,
    lesion_masks: pd.DataFrame,
    lake: LakeResource,
    mlflow: MlflowResource,
) -> MaterializeResult:
    import torch

    from radplan.models import segmentation

    vols, refs = normalized_volumes, lesion_masks
    pairs_frame = refs.merge(vols, left_on=["patient_key", "image_series_uid"], right_on=["patient_key", "series_uid"])
    pairs_frame = pairs_frame[pairs_frame["modality"] == "CT"].sort_values(["patient_key", "image_series_uid"])
    pairs = [(lake.root_path / v, lake.root_path / m) for v, m in zip(pairs_frame["volume_path"], pairs_frame["mask_path"])]
    training_config = segmentation.SegmentationTrainingConfig.for_device(torch.cuda.is_available())
    if config.max_epochs is not None:
        training_config = dataclasses.replace(training_config, max_epochs=config.max_epochs)
    context.log.info(f"training on {len(pairs)} CT volumes with reference masks ({training_config.max_epochs} epochs)")
    summary = segmentation.train_segmentation(
        pairs,
        training_config,
        tracking_uri=mlflow.tracking_uri,
        artifact_root=mlflow.artifact_path,
        model_name=SEGMENTATION_MODEL_NAME,
        progress=context.log.info,
        patients=pairs_frame["patient_key"].tolist(),
    )
    scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))}
    update_model_report(
        lake,
        "segmentation_model",
        {"name": SEGMENTATION_MODEL_NAME, "mlflow_version": summary.get("version"), "alias": summary.get("alias"),
         "val_dice": summary.get("val_dice"), "metrics": {"dice": summary.get("val_dice_ci")}, "champion_comparison": summary.get("champion_comparison"),
         "training_volumes": len(pairs), "device": summary.get("device"), "train_seconds": summary.get("train_seconds")},
    )
    return MaterializeResult(metadata={**scalars, "training_volumes": len(pairs)})


class PredictedMasksConfig(Config):
    min_champion_dice: float = 0.5


def champion_validation_dice(client) -> float | None:
    """Held-out Dice the current champion reached when it was trained (None: no champion)."""
    from radplan.models import registry

    version = registry.champion_version(client, SEGMENTATION_MODEL_NAME)
    if version is None:
        return None
    metrics = client.get_run(version.run_id).data.metrics
    return metrics.get("final_val_dice")


@asset(
    group_name="models",
    partitions_def=patient_partitions,
    deps=["segmentation_model"],
    description="Lesion masks from the champion segmentation model for CT series that have no reference mask, only when "
    "the champion's held-out Dice reaches the configured minimum; each is also written back as a DICOM SEG (highdicom) "
    "referencing the de-identified CT so a PACS viewer can show it.",
)
def predicted_lesion_masks(
    context: AssetExecutionContext,
    config: PredictedMasksConfig,
    normalized_volumes: pd.DataFrame,
    lesion_masks: pd.DataFrame,
    lake: LakeResource,
    mlflow: MlflowResource,
) -> MaterializeResult:
    from radplan.models import registry

    patient_key = context.partition_key
    vols, refs = normalized_volumes, lesion_masks
    todo = vols[(vols["modality"] == "CT") & ~vols["series_uid"].isin(refs["image_series_uid"] if len(refs) else [])] if len(vols) else vols
    client = _client(mlflow)
    champion_dice = champion_validation_dice(client) if len(todo) else None
    # Quality gate: masks from a model that segments poorly would feed wrong radiomics downstream.
    usable = champion_dice is not None and champion_dice >= config.min_champion_dice
    champion = registry.load_champion(client, SEGMENTATION_MODEL_NAME) if usable else None
    rows = []
    if champion is not None:
        import torch

        from radplan.models import segmentation

        model, version = champion
        headers = [read_instance_header(p) for p in sorted((lake.zone("deid") / "dicom" / patient_key).rglob("*.dcm"))]
        series_paths = {uid: [h.path for h in inst] for study in group_series(headers).values() for uid, inst in study.items()}
        training_config = segmentation.SegmentationTrainingConfig.for_device(torch.cuda.is_available())
        with lake.rebuild_patient_dir("features", "predicted_masks", patient_key) as staging:
            for volume in todo.itertuples():
                image_path = lake.root_path / volume.volume_path
                predicted = segmentation.predict_mask(model, image_path, training_config)
                labels = mask_ops.label_lesions(predicted)
                sitk.WriteImage(labels, str(staging / f"{volume.series_uid}.nii.gz"), useCompression=True)
                source_datasets = [pydicom.dcmread(p) for p in series_paths.get(volume.series_uid, [])]
                if source_datasets:
                    reference = volumes.load_series_volume(series_paths[volume.series_uid])
                    original_grid = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor)
                    segmentation.write_seg_dicom(
                        original_grid,
                        source_datasets,
                        staging / f"{volume.series_uid}.seg.dcm",
                        algorithm_name=SEGMENTATION_MODEL_NAME,
                        algorithm_version=str(version),
                    )
                stats = sitk.LabelShapeStatisticsImageFilter()
                stats.Execute(labels)
                rows.append(
                    {
                        "image_series_uid": volume.series_uid,
                        "mask_series_uid": None,
                        "source": f"model:{SEGMENTATION_MODEL_NAME}/{version}",
                        "lesions": len(stats.GetLabels()),
                        "mask_path": f"features/predicted_masks/{patient_key}/{volume.series_uid}.nii.gz",
                    }
                )
    frame = pd.DataFrame(rows, columns=["image_series_uid", "mask_series_uid", "source", "lesions", "mask_path"])
    return MaterializeResult(
        value=frame,
        metadata={
            "series_without_reference_mask": len(todo),
            "predicted": len(frame),
            "model_version": str(champion[1]) if champion else "none",
            "champion_val_dice": champion_dice if champion_dice is not None else float("nan"),
            "min_champion_dice": config.min_champion_dice,
        }
    )



def synthetic_true_probabilities(lake: LakeResource, deid_key) -> pd.Series | None:
    """Demo only: the generator's true response probabilities (RADPLAN_HOME/truth), for the Bayes-optimal AUC.

    The truth folder sits beside the lake only for a synthetic cohort; a real deployment has none and the
    model report then has no Bayes-optimal AUC.
    """
    truth_file = lake.root_path.parent / "truth" / "truth.json"
    if not (deid_key.demo and truth_file.exists()):
        return None
    return outcomes.synthetic_true_probabilities(json.loads(truth_file.read_text())["patients"], deid_key.pseudonymizer().patient_key)


# The calibrated candidates split each training fold 3 ways, so every training fold needs 3 patients of each
# outcome: with k = min(5, m) outer folds, m patients of the rarer outcome leave m - ceil(m / k) ≥ 3 only from m = 4.
MIN_OUTCOMES_PER_CLASS = 4


class ResponseModelConfig(Config):
    n_splits: int = 5
    n_bootstrap: int = 1000


@asset(
    group_name="models",
    deps=["patient_strata"],
    ins={"deid_ehr": one_table_of("observations")},
    metadata=table_metadata("response_model"),
    description="Response to first-line therapy from cohort features: rules-only baseline vs a prognostic logistic model vs "
    "gradient-boosted trees vs a Lightning MLP vs their ensemble on the same stratified folds; calibrated, with bootstrap CIs and per-patient "
    "attributions; registered as radplan-response with champion/challenger. Writes lake/exports/model_report.json.",
)
def response_model(
    context: AssetExecutionContext,
    config: ResponseModelConfig,
    cohort_features: pd.DataFrame,
    deid_ehr: pd.DataFrame,
    lake: LakeResource,
    mlflow: MlflowResource,
    deid_key: DeidKeyResource,
) -> MaterializeResult:
    from radplan import monitoring
    from radplan.models import response

    cohort_frame = cohort_features.set_index("patient_key", drop=False)
    therapy = cohort_frame["current_medications"].map(outcomes.first_line_therapy)
    labels = outcomes.outcome_labels(deid_ehr).set_index("patient_key")["responded"].astype(int)
    # The model is conditional on the regimen: a patient whose first-line regimen is unknown cannot be a training row.
    training = cohort_frame.loc[cohort_frame.index.intersection(labels.index).intersection(therapy.index[therapy.notna()])]
    smallest_class = int(labels.loc[training.index].value_counts().min()) if len(training) and labels.loc[training.index].nunique() == 2 else 0
    folds = min(config.n_splits, smallest_class)
    context.log.info(f"{len(training)} of {len(cohort_frame)} patients have an observed response; {folds}-fold CV")
    truth = synthetic_true_probabilities(lake, deid_key)
    tables = {}
    if smallest_class < MIN_OUTCOMES_PER_CLASS:
        # Too few outcomes of one class to cross-validate: recommendations go on from rules alone.
        entry = {"name": RESPONSE_MODEL_NAME, "trained": False,
                 "reason": f"needs ≥ {MIN_OUTCOMES_PER_CLASS} patients per outcome class, has {smallest_class}"}
        fitted, version = None, None
    else:
        result = response.train_response_models(
            training,
            labels.loc[training.index],
            therapy=therapy.loc[training.index],
            n_splits=folds,
            n_bootstrap=config.n_bootstrap,
            tracking_uri=mlflow.tracking_uri,
            artifact_root=mlflow.artifact_path,
            model_name=RESPONSE_MODEL_NAME,
            true_probabilities=truth.loc[training.index] if truth is not None else None,
            progress=context.log.info,
        )
        fitted, version = result["model"], str(result["version"])
        # What model_monitoring compares the scored cohort with: the rows this version was fitted on, each with
        # its probability under the regimen the patient received.
        tables["training_snapshot"] = monitoring.training_snapshot(training, result["predictions"], version)
        entry = {**response.model_report_entry(result), "trained": True}
    # One row per (patient, therapy the rule base can propose); out of scope rows say why (response.therapy_response_predictions).
    candidates = response.candidate_therapy_table(cohort_frame.reset_index(drop=True))
    predictions = response.therapy_response_predictions(fitted, cohort_frame.reset_index(drop=True), candidates,
                                                        model_name=RESPONSE_MODEL_NAME, model_version=version)
    tables["predictions"] = predictions
    update_model_report(lake, "response_model", entry)
    return MaterializeResult(
        value=tables,
        metadata={
            "patients_with_outcome": len(training),
            "folds": folds,
            "trained": bool(entry.get("trained")),
            "report": MetadataValue.json(entry),
        }
    )

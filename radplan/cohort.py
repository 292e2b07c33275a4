"""Joining one patient's modalities into a feature row, and stratifying the cohort.

Pure functions over DataFrames; the Dagster assets read and write the lake.
The row layout is documented in docs/architecture.md ("patient_features").
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

# Observed outcome: DICOM code 112049 "Best Overall Response" (DCM, TID 4106), valued with RECIST 1.1 categories.
RECIST_BEST_RESPONSE_CODE = "112049"
RESPONDER_VALUES = ("complete response", "partial response")


def is_responder(value) -> bool | None:
    """RECIST CR/PR count as response; SD/PD as none; anything else is unknown (None)."""
    text = str(value or "").strip().lower()
    if text in RESPONDER_VALUES:
        return True
    if text in ("stable disease", "progressive disease"):
        return False
    return None


PGX_GENES = ("CYP2C19", "CYP2C9", "VKORC1", "DPYD", "TPMT", "NUDT15", "SLCO1B1", "UGT1A1", "CYP2D6")

# Radiomic features carried into the cohort table (mean over the baseline study's lesions):
# intensity, heterogeneity and shape descriptors that are stable across scanners.
RADIOMIC_SUMMARY_FEATURES = (
    "original_firstorder_Mean",
    "original_firstorder_Entropy",
    "original_firstorder_Skewness",
    "original_glcm_Contrast",
    "original_glcm_Idm",
    "original_glszm_ZoneEntropy",
    "original_shape_Sphericity",
    "original_shape_Maximum3DDiameter",
)

# Knowledge-base alterations (gene, alteration substring) behind each boolean flag.
ALTERATION_FLAGS = {
    "alt_egfr_sensitizing": ("EGFR", ("L858R", "exon 19", "E746_A750del", "G719", "L861Q", "S768I")),
    "alt_egfr_t790m": ("EGFR", ("T790M",)),
    "alt_alk_fusion": ("ALK", ("fusion", "rearrangement")),
    "alt_ros1_fusion": ("ROS1", ("fusion", "rearrangement")),
    "alt_braf_v600e": ("BRAF", ("V600E",)),
    "alt_kras_g12c": ("KRAS", ("G12C",)),
    "alt_erbb2": ("ERBB2", ("",)),
    "alt_brca": ("BRCA", ("",)),
    "alt_pik3ca": ("PIK3CA", ("",)),
    "alt_met": ("MET", ("",)),
    "alt_ret": ("RET", ("",)),
    "alt_ntrk": ("NTRK", ("",)),
}


def _alteration_flags(alterations: list[tuple[str, str]]) -> dict[str, bool]:
    flags = {}
    for flag, (gene_prefix, patterns) in ALTERATION_FLAGS.items():
        flags[flag] = any(
            gene.upper().startswith(gene_prefix) and any(p.lower() in alteration.lower() for p in patterns)
            for gene, alteration in alterations
        )
    return flags


def _baseline_study_lesions(radiomics: pd.DataFrame) -> pd.DataFrame:
    """Lesions of the earliest study: the pre-treatment state (a later study would leak the response)."""
    if radiomics.empty:
        return radiomics
    baseline = radiomics["study_date_shifted"].astype(str).min()
    return radiomics[radiomics["study_date_shifted"].astype(str) == baseline]


def build_patient_features(
    patient_key: str,
    clinical: pd.DataFrame,
    radiomics: pd.DataFrame,
    actionable: pd.DataFrame,
    pgx: pd.DataFrame,
    findings: pd.DataFrame,
    *,
    has_genomics: bool,
    source_versions: dict,
) -> pd.DataFrame:
    """One row for one patient; missing modalities give nulls and a has_* flag, never a dropped patient."""
    row: dict = {"patient_key": patient_key}
    clinical_row = clinical.iloc[0].to_dict() if len(clinical) else {}
    row["has_ehr"] = bool(clinical_row.get("cancer_type") is not None or clinical_row.get("age_years") is not None)
    row["has_imaging"] = not radiomics.empty
    row["has_genomics"] = has_genomics
    row["has_notes"] = not findings.empty
    for column in (
        "age_years", "sex", "cancer_type", "stage", "tnm", "ecog", "smoking_status", "prior_lines_of_therapy",
        "lab_creatinine_mg_dl", "lab_bilirubin_mg_dl", "lab_alt_u_l", "lab_anc_10e9_l", "lab_hemoglobin_g_dl",
    ):
        value = clinical_row.get(column)
        row[column] = None if value is None or (isinstance(value, float) and np.isnan(value)) else value
    meds = clinical_row.get("current_medications")
    row["current_medications"] = [str(m) for m in meds] if meds is not None else []

    lesions = _baseline_study_lesions(radiomics)
    row["lesion_count"] = int(len(lesions))
    row["total_lesion_volume_ml"] = float(lesions["volume_ml"].sum()) if len(lesions) else None
    row["largest_lesion_volume_ml"] = float(lesions["volume_ml"].max()) if len(lesions) else None
    for feature in RADIOMIC_SUMMARY_FEATURES:
        row[f"rad_{feature}"] = float(lesions[feature].mean()) if len(lesions) and feature in lesions else None

    pairs = []
    if len(actionable):
        pairs = sorted({(str(g), str(a)) for g, a in zip(actionable["gene"], actionable["alteration"])})
    row["actionable_alterations"] = [f"{gene} {alteration}" for gene, alteration in pairs]
    row.update(_alteration_flags(pairs))

    by_gene = {r["gene"]: r for r in pgx.to_dict("records")} if len(pgx) else {}
    for gene in PGX_GENES:
        call = by_gene.get(gene, {})
        # genotype-only genes (VKORC1) carry no phenotype; the contract puts their genotype ("rs9923231 C/T") here
        row[f"pgx_{gene}_phenotype"] = call.get("phenotype") or call.get("genotype")
        row[f"pgx_{gene}_diplotype"] = call.get("diplotype")
    if len(pgx) and "allele_definition_version" in pgx:
        # the PGx knowledge-base version travels with every recommendation through source_versions
        source_versions = {**source_versions, "pgx_knowledge_base": str(pgx["allele_definition_version"].iloc[0])}
    dpyd_score = by_gene.get("DPYD", {}).get("activity_score")
    row["pgx_DPYD_activity_score"] = None if dpyd_score is None or pd.isna(dpyd_score) else float(dpyd_score)

    mentions = []
    if len(findings) and "finding" in findings:
        positive = findings[(findings["finding"] == "biomarker") & (~findings["negated"].astype(bool))]
        mentions = sorted({str(v) for v in positive["value"]})
    row["biomarker_mentions"] = mentions
    row["source_versions"] = json.dumps(source_versions, sort_keys=True)
    return pd.DataFrame([row])


def numeric_matrix(cohort: pd.DataFrame) -> pd.DataFrame:
    """Standardized numeric features for clustering (missing values imputed with the cohort median)."""
    numeric = cohort.select_dtypes(include=["number", "bool"]).astype(float)
    numeric = numeric.loc[:, numeric.notna().any()]
    numeric = numeric.fillna(numeric.median())
    spread = numeric.std(ddof=0).replace(0, 1.0)
    return (numeric - numeric.mean()) / spread


def stratify(cohort: pd.DataFrame, *, n_strata: int = 3, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """k-means and Ward hierarchical clustering on standardized features; returns strata and quality figures."""
    from sklearn.cluster import AgglomerativeClustering, KMeans
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    matrix = numeric_matrix(cohort)
    k = max(1, min(n_strata, len(matrix) - 1))
    if k < 2:
        strata = pd.DataFrame({"patient_key": cohort["patient_key"], "stratum": 0, "stratum_hierarchical": 0})
        return strata, {"n_strata": 1, "silhouette_kmeans": None, "silhouette_hierarchical": None, "sizes": {0: len(cohort)}}
    kmeans = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(matrix)
    ward = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(matrix)
    strata = pd.DataFrame({"patient_key": cohort["patient_key"].values, "stratum": kmeans, "stratum_hierarchical": ward})
    report = {
        "n_strata": k,
        "features": list(matrix.columns),
        "silhouette_kmeans": float(silhouette_score(matrix, kmeans)),
        "silhouette_hierarchical": float(silhouette_score(matrix, ward)),
        "agreement_ari": float(adjusted_rand_score(kmeans, ward)),
        "sizes": {int(s): int(n) for s, n in zip(*np.unique(kmeans, return_counts=True))},
    }
    return strata, report


def patient_features_schema():
    """Fixed Arrow schema, so every patient's partition has the same types (Spark merges them as one dataset)."""
    import pyarrow as pa

    string_list = pa.list_(pa.string())
    fields = [
        ("patient_key", pa.string()),
        ("has_ehr", pa.bool_()), ("has_imaging", pa.bool_()), ("has_genomics", pa.bool_()), ("has_notes", pa.bool_()),
        ("age_years", pa.float64()), ("sex", pa.string()), ("cancer_type", pa.string()), ("stage", pa.string()),
        ("tnm", pa.string()), ("ecog", pa.int64()), ("smoking_status", pa.string()), ("prior_lines_of_therapy", pa.int64()),
        ("lab_creatinine_mg_dl", pa.float64()), ("lab_bilirubin_mg_dl", pa.float64()), ("lab_alt_u_l", pa.float64()),
        ("lab_anc_10e9_l", pa.float64()), ("lab_hemoglobin_g_dl", pa.float64()),
        ("current_medications", string_list),
        ("lesion_count", pa.int64()), ("total_lesion_volume_ml", pa.float64()), ("largest_lesion_volume_ml", pa.float64()),
        *[(f"rad_{f}", pa.float64()) for f in RADIOMIC_SUMMARY_FEATURES],
        ("actionable_alterations", string_list),
        *[(flag, pa.bool_()) for flag in ALTERATION_FLAGS],
        *[(f"pgx_{g}_{part}", pa.string()) for g in PGX_GENES for part in ("phenotype", "diplotype")],
        ("pgx_DPYD_activity_score", pa.float64()),
        ("biomarker_mentions", string_list),
        ("source_versions", pa.string()),
    ]
    return pa.schema(fields)


def patient_features_table(frame: pd.DataFrame):
    import pyarrow as pa

    schema = patient_features_schema()
    frame = frame.copy()
    for name in ("ecog", "prior_lines_of_therapy", "lesion_count"):
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("Int64")
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def add_cohort_columns_pandas(features: pd.DataFrame) -> pd.DataFrame:
    """The cohort table computed with pandas; the Spark job must give the same rows."""
    out = features.copy()
    out["modalities_present"] = out[["has_ehr", "has_imaging", "has_genomics", "has_notes"]].astype(int).sum(axis=1)
    out["actionable_count"] = out["actionable_alterations"].map(len)
    out["pgx_calls"] = out[[f"pgx_{g}_phenotype" for g in PGX_GENES]].notna().sum(axis=1)
    return out.sort_values("patient_key").reset_index(drop=True)


def cohort_table_spark(spark, patient_features: str) -> pd.DataFrame:
    """Every patient's feature row on Spark, with the cohort columns derived there.

    ``patient_features`` is the table's compacted snapshot (one Parquet file, ``radplan.lake.refresh_compacted_snapshot``)
    or its hive-partitioned folder (one ``patient_key=`` folder per patient, read as one dataset).
    """
    from pathlib import Path

    from pyspark.sql import functions as F

    from radplan.lake import SNAPSHOT_FINGERPRINT_COLUMNS

    if Path(patient_features).is_file():
        frame = spark.read.parquet(patient_features).drop(*SNAPSHOT_FINGERPRINT_COLUMNS)
    else:
        frame = spark.read.option("basePath", patient_features).parquet(patient_features)
    modality_count = sum(F.col(c).cast("int") for c in ("has_ehr", "has_imaging", "has_genomics", "has_notes"))
    pgx_count = sum(F.col(f"pgx_{g}_phenotype").isNotNull().cast("int") for g in PGX_GENES)
    result = (
        frame.withColumn("modalities_present", modality_count)
        .withColumn("actionable_count", F.size("actionable_alterations"))
        .withColumn("pgx_calls", pgx_count)
        .orderBy("patient_key")
    )
    return result.toPandas()


def cohort_summary(cohort: pd.DataFrame) -> dict:
    """Counts per modality and missingness per column (fraction null)."""
    return {
        "patients": int(len(cohort)),
        "with_modality": {m: int(cohort[f"has_{m}"].sum()) for m in ("ehr", "imaging", "genomics", "notes")},
        "missingness": {c: float(cohort[c].isna().mean()) for c in cohort.columns if cohort[c].isna().any()},
        "cancer_types": {str(k): int(v) for k, v in cohort["cancer_type"].value_counts(dropna=False).items()},
    }

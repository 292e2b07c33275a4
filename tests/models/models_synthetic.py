"""Synthetic inputs the models tests build themselves: sphere lesions in noisy CT-like volumes, and a
patient_features cohort whose response follows a known logistic truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

ALTERATION_FLAGS = ["alt_egfr_sensitizing", "alt_egfr_t790m", "alt_alk_fusion", "alt_ros1_fusion", "alt_braf_v600e", "alt_kras_g12c",
                    "alt_erbb2", "alt_brca", "alt_pik3ca", "alt_met", "alt_ret", "alt_ntrk"]


def sphere_volumes(folder: Path, n: int, *, shape=(40, 40, 24), spacing=1.5, seed=0) -> list[tuple[Path, Path]]:
    """n (image, label) NIfTI pairs: a soft-tissue cylinder in air with 1-2 brighter spheres, label = sphere id."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    pairs = []
    for case in range(n):
        body = (x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2 < (0.45 * min(shape[:2])) ** 2
        image = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, shape)
        label = np.zeros(shape, np.uint8)
        for lesion in range(1 + case % 2):
            radius = rng.uniform(3, 5)
            centre = [rng.uniform(0.35 * s, 0.65 * s) for s in shape]
            inside = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 < radius**2
            label[inside] = lesion + 1
            image[inside] += 120.0
        paths = folder / f"case{case:02d}_ct.nii.gz", folder / f"case{case:02d}_lesions.nii.gz"
        for array, path in zip((image.astype(np.int16), label), paths):
            volume = sitk.GetImageFromArray(array.transpose(2, 1, 0))  # numpy (i, j, k) -> SimpleITK (k, j, i)
            volume.SetSpacing((spacing,) * 3)
            volume.SetOrigin((-30.0, 12.5, 100.0))
            sitk.WriteImage(volume, str(path))
        pairs.append(paths)
    return pairs


def response_cohort(n: int, *, seed: int = 0, truth: str = "driver") -> tuple[pd.DataFrame, pd.Series, pd.Series, pd.Series]:
    """(patient_features, labels, therapy, true probabilities), all indexed by patient_key.

    truth "driver": response driven by a targeted drug matching EGFR, ECOG and tumour burden.
    truth "radiomic": response driven by lesion sphericity and haemoglobin instead (a drifted population).
    """
    rng = np.random.default_rng(seed)
    keys = [f"p{rng.integers(0, 2**63):016x}" for _ in range(n)]
    egfr = rng.random(n) < 0.3
    ecog = rng.integers(0, 4, n)
    volume = rng.lognormal(2.5, 0.8, n)
    sphericity = rng.uniform(0.4, 0.9, n)
    hemoglobin = rng.normal(12.5, 1.5, n)
    therapy = np.where(egfr & (rng.random(n) < 0.75), "osimertinib", rng.choice(["pembrolizumab", "carboplatin"], n))
    features = pd.DataFrame({
        "patient_key": keys,
        "has_imaging": True, "has_genomics": True, "has_ehr": True, "has_notes": rng.random(n) < 0.7,
        "age_years": rng.normal(62, 10, n), "sex": rng.choice(["F", "M"], n),
        "cancer_type": rng.choice(["nsclc", "breast", "colorectal", "melanoma", "other"], n),
        "stage": rng.choice(["I", "II", "III", "IV", None], n), "tnm": None,
        "ecog": pd.array(ecog, dtype="Int64"), "smoking_status": rng.choice(["current", "former", "never", None], n),
        "prior_lines_of_therapy": rng.integers(0, 3, n),
        "lab_creatinine_mg_dl": rng.normal(1.0, 0.2, n), "lab_bilirubin_mg_dl": rng.normal(0.8, 0.2, n),
        "lab_alt_u_l": rng.normal(30, 8, n), "lab_anc_10e9_l": rng.normal(4, 1, n), "lab_hemoglobin_g_dl": hemoglobin,
        "current_medications": [["omeprazole"] if rng.random() < 0.3 else [] for _ in range(n)],
        "lesion_count": rng.integers(1, 5, n), "total_lesion_volume_ml": volume * 1.6, "largest_lesion_volume_ml": volume,
        "rad_original_firstorder_Mean": rng.normal(40, 10, n), "rad_original_shape_Sphericity": sphericity,
        "actionable_alterations": [["EGFR L858R"] if e else [] for e in egfr],
        "pgx_CYP2C19_phenotype": rng.choice(["Poor Metabolizer", "Intermediate Metabolizer", "Normal Metabolizer", None], n),
        "pgx_VKORC1_phenotype": rng.choice(["rs9923231 C/C", "rs9923231 C/T", "rs9923231 T/T"], n),
        "pgx_DPYD_activity_score": rng.choice([1.0, 1.5, 2.0], n),
        "biomarker_mentions": [["PD-L1 TPS 60%"] if rng.random() < 0.3 else [] for _ in range(n)],
        "stratum": None, "source_versions": "{}",
    })
    for flag in ALTERATION_FLAGS:
        features[flag] = egfr if flag == "alt_egfr_sensitizing" else False
    matched = (therapy == "osimertinib") & egfr
    if truth == "driver":
        logit = -0.6 + 3.0 * matched - 1.1 * (ecog - 1.5) - 1.0 * (np.log(volume) - 2.5)
    else:
        logit = -0.3 + 1.8 * (sphericity - 0.65) / 0.14 + 0.9 * (hemoglobin - 12.5) / 1.5
    probability = 1.0 / (1.0 + np.exp(-logit))
    labels = (rng.random(n) < probability).astype(int)
    index = pd.Index(keys, name="patient_key")
    return features, pd.Series(labels, index=index), pd.Series(therapy, index=index), pd.Series(probability, index=index)

"""Cohort plots as PNG (matplotlib, object API: no global pyplot state in a web server's threads)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve

PSI_ALERT = 0.25  # the model_monitoring check's threshold (README "Monitoring and feedback")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def response_by_stratum_png(frame: pd.DataFrame) -> bytes:
    """Box plot of response probability per stratum (patients without a stratum in their own box)."""
    labels = frame["stratum"].map(lambda s: "no stratum" if pd.isna(s) else f"stratum {int(s)}")
    groups = sorted(labels.unique(), key=lambda label: (label == "no stratum", label))
    data = [frame.loc[labels == g, "probability"].astype(float).dropna().to_numpy() for g in groups]
    figure = Figure(figsize=(6.5, 3.4))
    axis = figure.add_subplot()
    axis.boxplot(data, tick_labels=[f"{g}\n(n={len(d)})" for g, d in zip(groups, data)])
    axis.set_ylim(0, 1)
    axis.set_ylabel("estimated probability of response")
    axis.set_title("Response estimates by stratum (current model)", fontsize=10)
    return _png(figure)


def calibration_png(points: pd.DataFrame, model_label: str) -> bytes:
    """Reliability diagram: observed response rate per quantile bin of the predicted probability."""
    y = points["responded"].astype(int).to_numpy()
    p = points["probability"].astype(float).to_numpy()
    bins = int(max(2, min(5, len(points) // 5)))
    observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="quantile")
    figure = Figure(figsize=(4.8, 4.2))
    axis = figure.add_subplot()
    axis.plot([0, 1], [0, 1], linestyle="--", color="#888888", label="perfect calibration")
    axis.plot(predicted, observed, marker="o", color="#2e6da4", label=f"{model_label} ({len(points)} patients, {bins} bins)")
    axis.set_xlim(0, 1), axis.set_ylim(0, 1)
    axis.set_xlabel("mean predicted probability"), axis.set_ylabel("observed response rate")
    axis.set_title("Calibration of the champion response model", fontsize=10)
    axis.legend(fontsize=7, loc="upper left")
    return _png(figure)


def drift_png(drift: pd.DataFrame, top: int = 15) -> bytes:
    """PSI of the most drifted features, with the alert threshold."""
    shown = drift.dropna(subset=["psi"]).sort_values("psi").tail(top)
    figure = Figure(figsize=(6.5, 0.35 * max(len(shown), 1) + 1.2))
    axis = figure.add_subplot()
    axis.barh(range(len(shown)), shown["psi"].astype(float), color=["#c0392b" if v > PSI_ALERT else "#2e6da4" for v in shown["psi"]])
    axis.set_yticks(range(len(shown)), labels=list(shown["feature"].astype(str)), fontsize=7)
    axis.axvline(PSI_ALERT, color="#333333", linestyle="--", linewidth=0.8)
    axis.set_xlabel(f"population stability index (alert above {PSI_ALERT})", fontsize=8)
    axis.set_title("Input drift vs the training snapshot", fontsize=10)
    return _png(figure)


def freshness_png(freshness: pd.DataFrame) -> bytes:
    """Hours since the newest landing file and the newest lake write, per source (sources with neither are left out)."""
    shown = freshness[freshness["landing_age_h"].notna() | freshness["lake_age_h"].notna()]
    positions = np.arange(len(shown))
    figure = Figure(figsize=(6.5, 0.5 * max(len(shown), 1) + 1.2))
    axis = figure.add_subplot()
    landing = shown["landing_age_h"].astype(float).to_numpy()
    lake = shown["lake_age_h"].astype(float).to_numpy()
    # A missing side draws no bar and says so: an empty folder is not "0 hours old".
    axis.barh(positions - 0.2, np.nan_to_num(landing, nan=0.0), height=0.4, label="newest landing file", color="#8e44ad")
    axis.barh(positions + 0.2, np.nan_to_num(lake, nan=0.0), height=0.4, label="newest lake write", color="#27ae60")
    for position, value, offset in [*zip(positions, landing, [-0.2] * len(shown)), *zip(positions, lake, [0.2] * len(shown))]:
        if np.isnan(value):
            axis.text(0, position + offset, " none yet", va="center", fontsize=7, color="#c0392b")
    axis.set_yticks(positions, labels=list(shown["source"]), fontsize=8)
    axis.set_xlabel("age (hours)", fontsize=8)
    axis.set_title("Data freshness per source", fontsize=10)
    axis.legend(fontsize=7)
    return _png(figure)

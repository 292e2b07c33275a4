"""Multimodal treatment-response model: the names other code imports, in one place.

The model lives in modules a reader can take one at a time:

- :mod:`radplan.models.features`: the design matrix from ``patient_features`` (plus a regimen per patient);
- :mod:`radplan.models.candidates`: the rules baseline, prognostic logistic, gradient boosting, Lightning MLP and ensemble;
- :mod:`radplan.models.training`: cross-validation, the champion rule, the fitted :class:`ResponseModel`;
- :mod:`radplan.models.evaluation`: metrics with bootstrap CIs, calibration (Brier, ECE);
- :mod:`radplan.models.explanation`: sampling Shapley attributions;
- :mod:`radplan.models.prediction`: per-patient and per-(patient, therapy) estimates with scope;
- :mod:`radplan.models.therapies`: candidate therapies from the rule base and the model's scope;
- :mod:`radplan.models.outcomes`: outcome labels, first-line regimen, synthetic truth from plain tables;
- :mod:`radplan.models.reporting`: MLflow logging, champion/challenger registration, the model report entry.

Fitted models pickled before the split name classes as ``radplan.models.response.<Class>``; they are
re-exported here so such models still load.
"""

from radplan.models.candidates import (  # noqa: F401
    _FACTORIES,
    CANDIDATES,
    LEARNED_CANDIDATES,
    LOG_SCALED_COVARIATES,
    PROGNOSTIC_COVARIATES,
    LightningMLPClassifier,
    PrespecifiedCovariates,
    RulesBaselineClassifier,
    _MLPModule,
    calibration_method,
    design_rule_scores,
    make_ensemble,
    make_gradient_boosting,
    make_mlp,
    make_prognostic_logistic,
    rule_scores,
)
from radplan.models.evaluation import (  # noqa: F401
    METRICS,
    THRESHOLD,
    _auc_difference_ci,
    _weighted_metrics,
    bootstrap_weights,
    calibration_summary,
    expected_calibration_error,
    metrics_with_ci,
)
from radplan.models.explanation import explain, importance_plot, shapley_attributions  # noqa: F401
from radplan.models.features import (  # noqa: F401
    MODALITY_COLUMNS,
    NUMERIC_COLUMNS,
    encodings,
    feature_groups,
    feature_matrix,
    regimen_drugs,
    regimen_name,
    therapy_class,
    therapy_profile,
    therapy_targets_driver,
)
from radplan.models.outcomes import first_line_therapy, outcome_labels, synthetic_therapy_probabilities, synthetic_true_probabilities  # noqa: F401
from radplan.models.prediction import THERAPY_PREDICTION_COLUMNS, predict_response, therapy_probabilities, therapy_response_predictions  # noqa: F401
from radplan.models.reporting import MODEL_ARTIFACT, model_report_entry, train_response_models  # noqa: F401
from radplan.models.therapies import MIN_THERAPY_SUPPORT, candidate_therapies, candidate_therapy_table  # noqa: F401
from radplan.models.training import ResponseModel, _platt_draws, choose_champion, fit_response_model, single_threaded  # noqa: F401

_single_threaded = single_threaded

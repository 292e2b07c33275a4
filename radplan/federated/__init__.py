"""Learning across hospitals without pooling data.

- :mod:`radplan.federated.sites`: synthetic hospital sites, each with its own lake, case mix, scanner settings and
  de-identification key (no patient in two sites);
- :mod:`radplan.federated.model`: the federated response model (a logistic model on the prespecified prognostic
  covariates, in torch), local training with FedProx and optional DP-SGD (Opacus), evaluation;
- :mod:`radplan.federated.aggregation`: update validation (malformed / diverging updates) and weighted averaging;
- :mod:`radplan.federated.flare_server` / :mod:`radplan.federated.flare_client`: the NVIDIA FLARE controller
  (server side) and site script (client side);
- :mod:`radplan.federated.engine`: provisions and starts the FLARE server and one client process per site on
  127.0.0.1, submits a job and collects what the server kept;
- :mod:`radplan.federated.reporting`: MLflow per-site and global metrics, registration of a complete global model.

Nothing here imports Dagster.
"""

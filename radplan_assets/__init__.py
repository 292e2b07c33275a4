"""Software-defined assets, one module per domain, plus asset checks."""

from radplan_assets import checks, cohort, decision, ehr, federated, genomics, imaging, ingest, integrity, models, monitoring

ASSET_MODULES = [ingest, imaging, genomics, ehr, cohort, models, decision, monitoring, checks, integrity, federated]

"""Software-defined assets, one module per domain, plus asset checks."""

from radplan_assets import (checks, cohort, decision, ehr, federated, genomics, imaging, ingest, integrity, models, monitoring,
                            pacs_return)

ASSET_MODULES = [ingest, imaging, genomics, ehr, cohort, models, pacs_return, decision, monitoring, checks, integrity, federated]

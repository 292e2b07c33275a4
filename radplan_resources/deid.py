"""The de-identification key: from the environment, the built-in demo key only in demo mode."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from radplan.pseudonym import Pseudonymizer, load_key


class DeidKeyResource(ConfigurableResource):
    """Builds the keyed Pseudonymizer. The key itself is never config, metadata or a log line."""

    demo: bool = Field(default=False, description="Allow the built-in demo key when RADPLAN_DEID_KEY is unset (synthetic data only)")

    def validate(self) -> None:
        """Raise MissingKeyError now (at start-up) if the key is missing or too short, instead of in the first run."""
        load_key(demo=self.demo)

    def pseudonymizer(self) -> Pseudonymizer:
        return Pseudonymizer(load_key(demo=self.demo))

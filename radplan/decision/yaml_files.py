"""Loading the decision knowledge files (rule base, interaction knowledge base): one YAML mapping, checked fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml

# libyaml when available: the same safety as SafeLoader, faster.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def load_yaml_mapping(path: Path, fields: Sequence[str], what: str, error: type[Exception]) -> tuple[dict[str, Any], bytes]:
    """The file's top-level mapping and its bytes; ``error`` names ``what`` and the file when it is not valid YAML,
    not a mapping, or its top-level fields differ from ``fields``."""
    raw_bytes = Path(path).read_bytes()
    try:
        payload = yaml.load(raw_bytes, Loader=YAML_LOADER)
    except yaml.YAMLError as exc:
        raise error(f"{what} {path.name}: not valid YAML ({exc})") from exc
    if not isinstance(payload, dict):
        raise error(f"{what} {path.name}: top level must be a mapping")
    unknown = sorted(set(payload) - set(fields))
    missing = [k for k in fields if k not in payload]
    if unknown or missing:
        raise error(f"{what} {path.name}: unknown top-level fields {unknown}, missing {missing}")
    return payload, raw_bytes

"""Models tests: make the synthetic-data helpers importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

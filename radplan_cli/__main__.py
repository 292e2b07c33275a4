"""`python -m radplan_cli` is the `radplan` command."""

import sys

from radplan_cli import main

sys.exit(main())

import sys

from radplan_dashboard.cli import main

sys.exit(main())

"""`python -m analysis.intruder`: intruder dimensions of run folders (analysis/intruder/report.py)."""

import sys

from analysis.intruder.report import main

sys.exit(main())

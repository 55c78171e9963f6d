"""`python -m analysis.claims`: the ledger from a study's records (analysis/claims/report.py)."""

import sys

from analysis.claims.report import main

sys.exit(main())

"""``python -m metering.report --account A --cycle YYYY-MM --db DIR --out FILE.html``."""

import sys

from metering.report.cli import main

sys.exit(main())

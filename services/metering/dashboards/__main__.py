import sys

from metering.dashboards.generate import main

sys.exit(main())

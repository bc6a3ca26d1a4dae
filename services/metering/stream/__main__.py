"""``python -m metering.stream``: run the streaming worker (flags of ``metering worker``)."""

from metering.stream.cli import main

raise SystemExit(main())

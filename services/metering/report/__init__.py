"""``metering report``: one account's cycle as a self-contained HTML page.

:mod:`.data` reads what the page shows from ClickHouse, :mod:`.render` writes the page
(inline CSS and SVG, no external resources), :mod:`.cli` is the command.
"""

from metering.report.data import ReportData, ReportNotFound, load_report
from metering.report.render import render_html

__all__ = ["ReportData", "ReportNotFound", "load_report", "render_html"]

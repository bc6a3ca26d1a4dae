"""Grafana dashboards of the metering service, generated from Python.

- :mod:`~metering.dashboards.builder`: the dashboard/panel/variable/target model and its
  Grafana JSON, plus SQL helpers following the ClickHouse plugin's conventions;
- one module per dashboard: :mod:`~metering.dashboards.insights`,
  :mod:`~metering.dashboards.voice`, :mod:`~metering.dashboards.fairuse` (ClickHouse) and
  :mod:`~metering.dashboards.health` (Prometheus);
- :mod:`~metering.dashboards.grafana`: how Grafana and the plugin expand a panel's SQL
  (macros, template variables), used by the tests to run every query against chDB;
- :mod:`~metering.dashboards.generate`: ``metering dashboards [--check]`` writes or checks
  ``deploy/grafana/dashboards/*.json``.
"""

from metering.dashboards.generate import check, dashboards, documents, main, write

__all__ = ["check", "dashboards", "documents", "main", "write"]

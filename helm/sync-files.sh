#!/usr/bin/env bash
# Copies the files the chart embeds from their sources (tests/test_helm.py checks the
# copies are equal to them):
#   deploy/prometheus/rules/metering.rules.yml -> helm/metering/files/metering.rules.yml
#   deploy/grafana/dashboards/*.json           -> helm/metering/files/dashboards/
set -euo pipefail
cd "$(dirname "$0")/.."
chart=helm/metering/files
cp deploy/prometheus/rules/metering.rules.yml "$chart/metering.rules.yml"
mkdir -p "$chart/dashboards"
find "$chart/dashboards" -maxdepth 1 -name '*.json' -delete
shopt -s nullglob
for f in deploy/grafana/dashboards/*.json; do
    cp "$f" "$chart/dashboards/"
done
echo "sync-files: $(find "$chart/dashboards" -maxdepth 1 -name '*.json' | wc -l) dashboard(s), rules copied"

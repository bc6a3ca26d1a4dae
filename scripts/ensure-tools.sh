#!/usr/bin/env bash
# Installs the system tools the tests use, from Debian's packages, only when missing:
#   promtool  (package `prometheus`): `promtool check rules` / `promtool test rules`
#   kcat      (package `kcat`):       reading and writing Kafka topics by hand and in tests
#
# Idempotent (does nothing when both are on PATH), non-interactive (no stdin needed), for
# root in CI or a user with passwordless sudo. Prints what it does. Exits non-zero when a
# tool is missing and cannot be installed.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# command -> Debian package
declare -A PACKAGES=([promtool]=prometheus [kcat]=kcat)

missing=()
for tool in promtool kcat; do
    if command -v "$tool" >/dev/null 2>&1; then
        echo "ensure-tools: $tool present ($(command -v "$tool"))"
    else
        missing+=("${PACKAGES[$tool]}")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "ensure-tools: missing ${missing[*]}; run as root (apt-get install ${missing[*]})" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-tools: missing ${missing[*]} and no apt-get on this machine" >&2
    exit 1
fi

echo "ensure-tools: installing ${missing[*]} with apt-get"
"${SUDO[@]}" apt-get update -qq </dev/null
# --no-install-recommends: promtool needs nothing of the recommended Prometheus extras.
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" </dev/null

for tool in promtool kcat; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "ensure-tools: $tool still missing after installing ${missing[*]}" >&2
        exit 1
    fi
    echo "ensure-tools: $tool ready ($(command -v "$tool"))"
done

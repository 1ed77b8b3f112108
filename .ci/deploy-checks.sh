#!/usr/bin/env bash
# Checks of the deployment files that need promtool: the alert rules are valid and their unit
# tests pass. Installs promtool (Debian's `prometheus` package) when it is missing, without
# starting the Prometheus service, and the tools tests/deploy uses when they are missing and
# packaged (kubectl for `kubectl kustomize`, jq for the runbook's recipe); without those the
# tests fall back or skip.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_updated=0

# apt_install PACKAGE: quiet, no recommends, and no service started (policy-rc.d says no).
apt_install() {
    local policy=/usr/sbin/policy-rc.d created_policy=0 status=0 log
    log="$(mktemp)"
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    {
        if [ "$apt_updated" = 0 ]; then apt-get update -qq && apt_updated=1; fi &&
            apt-get install -y -qq --no-install-recommends "$1"
    } >"$log" 2>&1 || status=$?
    if [ "$created_policy" = 1 ]; then
        rm -f "$policy"
    fi
    if [ "$status" != 0 ]; then
        cat "$log" >&2
        echo "deploy-checks: could not install $1" >&2
    fi
    rm -f "$log"
    return "$status"
}

# packaged PACKAGE: whether apt knows a candidate version for it.
packaged() {
    if [ "$apt_updated" = 0 ]; then apt-get update -qq >/dev/null 2>&1 && apt_updated=1; fi
    local policy
    policy="$(apt-cache policy "$1" 2>/dev/null || true)"
    [[ "$policy" == *"Candidate: "[!\(]* ]]
}

if ! command -v promtool >/dev/null 2>&1; then
    echo "deploy-checks: installing promtool (Debian package prometheus)"
    apt_install prometheus
fi
for tool in kubectl jq; do
    if ! command -v "$tool" >/dev/null 2>&1 && packaged "$tool"; then
        echo "deploy-checks: installing $tool"
        apt_install "$tool" || echo "deploy-checks: going on without $tool"
    fi
done

promtool --version 2>&1 | head -n 1
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
echo "deploy-checks: ok"

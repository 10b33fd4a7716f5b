#!/usr/bin/env bash
# The README's two commands again, in a new virtualenv of the newest supported Python this
# machine offers (the oldest, 3.11, is the machine's own and runs first in .ci/run). pyenv's
# interpreters are looked up by path: its shims answer only for the selected version.
set -euo pipefail
cd "$(dirname "$0")/.."
python=""
for v in 3.13 3.12; do
    for candidate in "$(command -v "python$v" 2>/dev/null || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python"$v"; do
        if [ -x "$candidate" ] && "$candidate" -c 'import sys' 2>/dev/null; then python=$candidate; break 2; fi
    done
done
if [ -z "$python" ]; then
    echo "ci: no Python newer than 3.11 on this machine; only 3.11 was tested" >&2
    exit 0
fi
venv=$(mktemp -d)/venv
"$python" -m venv "$venv"
echo "ci: the README's commands on $("$venv/bin/python" --version) in $venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install --quiet -c constraints.txt -e '.[test]' -e './server[test]' && python -m pyfriction demo > /dev/null
python -m pytest -q -p no:cacheprovider

#!/usr/bin/env bash
# Compiles, once at install, what every pytest process would otherwise compile again.
#
# pytest rewrites the asserts of every module in an installed plugin's packages (nbgate and
# reporting, and anyio, xdist, platformdirs, nbmake here) and keeps the result in its own .pyc
# files beside the normal ones; it reads them whatever the environment, but writes them only
# where Python may write bytecode. With PYTHONDONTWRITEBYTECODE set (CI machines, many images)
# nothing is ever written, so every pytest process and every xdist worker compiled ~80 modules
# again: 0.5-0.8 s of CPU before the first notebook, measured with `make bench`.
#
# Here one pytest session with bytecode writing on loads every plugin and imports every nbgate
# module, leaving those files in place; `compileall` does the same for the plain .pyc files of
# the editable checkout (kernels import nbgate without pytest). A stale file is harmless:
# Python and pytest both check it against the source and recompile in memory.
# Usage: warm-bytecode.sh PYTHON
set -euo pipefail

PYTHON="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"  # the venv's, from inside $WORK too
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cat > "$WORK/test_import_nbgate.py" <<'EOF'
import importlib
import pkgutil

import nbgate
import reporting


def test_every_nbgate_module_imports():
    for package in (nbgate, reporting):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)
EOF

export PYTHONDONTWRITEBYTECODE=
"$PYTHON" -m compileall -q "$ROOT/nbgate" "$ROOT/reporting" >/dev/null
# The session's own folder, so no project's pytest configuration or conftest is read.
(cd "$WORK" && "$PYTHON" -m pytest -q -p no:cacheprovider --rootdir "$WORK" \
    test_import_nbgate.py >/dev/null)

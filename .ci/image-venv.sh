#!/usr/bin/env bash
# The nbgate jobs' install step in this repository (the component's `install` input).
# Only inside the image (NBGATE_IMAGE=1): the image may be the fallback built from an older lock,
# so sync the venv to this checkout's requirements.txt when their hashes differ, and run this
# checkout's nbgate rather than the copy baked into the image. Anywhere else (a shell runner,
# gitlab-ci-local) the environment on PATH is taken as it is.
set -euo pipefail
if [ -n "${NBGATE_IMAGE:-}" ]; then
  if [ "$(sha256sum requirements.txt | cut -d' ' -f1)" != "$(cat "$VIRTUAL_ENV/.requirements.sha256" 2>/dev/null)" ]; then
    echo "nbgate: image built from another lock; syncing the venv to requirements.txt"
    uv pip install --quiet -r requirements.txt
  fi
  if [ -d nbgate ]; then uv pip install --quiet --no-deps -e .; fi
fi

#!/usr/bin/env bash
# Creates .venv with everything AnimaX and its tests need (pinned in pyproject.toml).
# Safe to run again: an existing .venv is updated in place.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    echo "setup.sh: AnimaX needs Python 3.11 (bpy 5.0.1); set PYTHON=/path/to/python3.11" >&2
    exit 1
}
# Headless Blender (bpy) renders the templates with Workbench through Mesa's EGL.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
   && ! dpkg -s libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"

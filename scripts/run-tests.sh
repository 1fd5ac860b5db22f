#!/usr/bin/env bash
# The test command: a venv with hhscan and its test tools, the project's localhost Slurm cluster, then pytest.
# Needs root (apt-get and the Slurm daemons) on Debian/Ubuntu. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/hhscan ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[test]"
fi
scripts/slurm-cluster.sh start
eval "$(scripts/slurm-cluster.sh env)"
.venv/bin/ruff check scan tests bench
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# The whole test suite. Sets up what the tests need on a fresh machine by itself:
# a local Python venv (.venv) with the vendor SDKs from tests/python-requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv for the vendor SDK tests"
  python3 -m venv .venv
fi
if ! cmp -s tests/python-requirements.txt .venv/.installed-requirements 2>/dev/null; then
  echo "==> installing vendor SDKs into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/python-requirements.txt
  cp tests/python-requirements.txt .venv/.installed-requirements
fi
export POSTERN_TEST_PYTHON="$PWD/.venv/bin/python"

echo "==> cargo test"
cargo test --workspace "$@"

#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine: the Rust components
# and cargo-nextest (if missing), systemd-analyze, and a Python venv in .venv
# with the query engines the dataset is checked with, at the exact versions of
# scripts/requirements-test.txt. Safe to run again: the venv is kept, and its
# packages are installed again whenever the requirements file changed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust stable (rustup) first" >&2
    exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

# The unit test runs systemd-analyze (verify, security) on the shipped unit.
if ! command -v systemd-analyze >/dev/null; then
    echo "installing systemd-analyze (Debian package systemd)"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq systemd >/dev/null || {
        echo "cannot install systemd-analyze: install the systemd package" >&2
        exit 1
    }
fi

PYTHON=${PYTHON:-python3}
REQUIREMENTS=scripts/requirements-test.txt
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# The stamp is the hash of the requirements the venv was last installed
# from: a changed pin (or a venv made by an older setup.sh) reinstalls.
wanted=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
installed=$(cat .venv/.requirements-test.sha256 2>/dev/null || true)
if [ "$wanted" != "$installed" ]; then
    echo "installing $REQUIREMENTS into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    echo "$wanted" > .venv/.requirements-test.sha256
fi
.venv/bin/python -c "import duckdb, pandas, polars, pyarrow; print('python test deps: duckdb', duckdb.__version__, 'pandas', pandas.__version__, 'polars', polars.__version__, 'pyarrow', pyarrow.__version__)"

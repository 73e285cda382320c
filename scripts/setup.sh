#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine: the Rust components
# and cargo-nextest (if missing or older than 0.9.91), systemd-analyze, a Python venv in .venv
# with the query engines the dataset is checked with and moto (the S3
# server of the upload tests), at the exact versions of
# scripts/requirements-test.txt, and Azurite (the Azure Blob emulator of the
# az:// tests) into .tools/azurite, at the exact versions of
# scripts/azurite/package-lock.json. Safe to run again: the venv and
# .tools are kept, and their packages are installed again whenever their
# pins changed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust stable (rustup) first" >&2
    exit 1
fi
# .config/nextest.toml orders tests by priority: nextest 0.9.91 or newer.
nextest_is_recent() {
    local version
    version=$(cargo nextest --version 2>/dev/null | sed -n 's/^cargo-nextest \([0-9.]*\).*/\1/p')
    [ -n "$version" ] && [ "$(printf '%s\n' 0.9.91 "$version" | sort -V | head -1)" = 0.9.91 ]
}
if ! nextest_is_recent; then
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

# Azurite runs on Node.js (its pinned 3.35.0 is the last release that runs
# on Node 20, Debian 13's). npm ci installs exactly the lock file's tree,
# without running any package's install scripts (Azurite needs none).
if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
    echo "installing Node.js and npm (Debian packages nodejs, npm)"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nodejs npm >/dev/null || {
        echo "cannot install Node.js: install nodejs (20 or later) and npm" >&2
        exit 1
    }
fi
AZURITE_DIR=.tools/azurite
wanted=$(cat scripts/azurite/package.json scripts/azurite/package-lock.json | sha256sum | cut -d' ' -f1)
installed=$(cat "$AZURITE_DIR/.installed.sha256" 2>/dev/null || true)
if [ "$wanted" != "$installed" ]; then
    echo "installing scripts/azurite/package-lock.json into $AZURITE_DIR"
    rm -rf "$AZURITE_DIR"
    mkdir -p "$AZURITE_DIR"
    cp scripts/azurite/package.json scripts/azurite/package-lock.json "$AZURITE_DIR/"
    npm ci --prefix "$AZURITE_DIR" --ignore-scripts --no-audit --no-fund --loglevel=error
    echo "$wanted" > "$AZURITE_DIR/.installed.sha256"
fi
echo "azurite $(node "$AZURITE_DIR/node_modules/azurite/dist/src/blob/main.js" --version) on node $(node --version)"

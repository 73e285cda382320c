#!/usr/bin/env bash
# The whole test suite, as the README and CI run it: installs what the tests
# need (scripts/setup.sh), then every Rust test of the workspace (unit,
# property, the fake exchange's own tests, and the integration tests, which
# also run the DuckDB/pandas/polars/pyarrow checks through the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo nextest run --workspace --no-fail-fast "$@"

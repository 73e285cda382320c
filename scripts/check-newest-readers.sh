#!/usr/bin/env bash
# Not part of CI: runs the reader matrix (tests/python/check_dataset.py,
# through the end-to-end test) with the newest releases of DuckDB, pandas,
# polars and pyarrow instead of the pinned ones of
# scripts/requirements-test.txt, to learn early whether a new release
# breaks a call of docs/DATASET.md "How it is read". When it passes, the
# pins may be raised to the versions it prints.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv-newest
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# The package names of the requirements file, without their pins.
packages=$(sed -e 's/#.*//' -e 's/[=<>~!].*//' -e '/^[[:space:]]*$/d' scripts/requirements-test.txt)
# shellcheck disable=SC2086 # one word per package
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade $packages
"$VENV/bin/python" -m pip freeze | grep -iE "^($(echo $packages | tr ' ' '|'))==" || true
RECORDER_TEST_PYTHON="$PWD/$VENV/bin/python" cargo nextest run --test recorder \
    -E 'test(three_symbols_two_whole_hours_match_ground_truth)' --no-capture "$@"

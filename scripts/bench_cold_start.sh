#!/usr/bin/env bash
# The cold start of a whole-exchange config (issue 12), measured with and
# without fill.agg_trade_evidence in one go: the same test, the same fake
# (350 quiet symbols x trade, aggTrade, kline_1m, seed 42, 4x), two runs.
# Prints the REST calls, weight and seal lateness of each; docs/BENCHMARKS.md
# holds the figures. Compare the ratios, not absolute figures across runs.
set -euo pipefail
cd "$(dirname "$0")/.."
for evidence in false true; do
    COLD_START_AGG_TRADE_EVIDENCE=$evidence cargo nextest run --test recorder \
        -E 'test(/cold_start_of_a_whole_exchange/)' --no-capture 2>&1 \
        | grep -E '^cold start|files complete|last file sealed|^\s+(PASS|FAIL)' || true
done

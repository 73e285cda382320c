#!/usr/bin/env bash
# Demo: the fake exchange at 120x on 127.0.0.1, the recorder pointed at it
# for about 45 seconds (a simulated hour and a half), then the sealed
# Parquet files queried with DuckDB. Everything stays under data/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
# The release build of README command 1 (reused when it is there), and only
# DuckDB for the query (not the test suite's setup).
cargo build --quiet --release -p fake-binance -p binance-recorder
if ! .venv-demo/bin/python -c "import duckdb, pytz" 2>/dev/null; then
    "${PYTHON:-python3}" -m venv .venv-demo
    .venv-demo/bin/python -m pip install --quiet --disable-pip-version-check \
        "$(grep '^duckdb==' scripts/requirements-test.txt)" "$(grep '^pytz==' scripts/requirements-test.txt)"
fi
demo=data/demo
rm -rf "$demo" && mkdir -p "$demo"

# Start the simulated clock 30 s before a whole hour so one seals quickly.
now_ms=$(date +%s%3N)
start_ms=$(( (now_ms / 3600000 + 1) * 3600000 - 30000 ))
target/release/fake-binance --speed 120 --start-ms "$start_ms" --symbols BTCUSDT,ETHUSDT >"$demo/fake.out" 2>"$demo/fake.log" &
fake_pid=$!
recorder_pid=
cleanup() {
    [ -n "$recorder_pid" ] && kill "$recorder_pid" 2>/dev/null || true
    kill "$fake_pid" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do grep -q '^rest=' "$demo/fake.out" 2>/dev/null && break; sleep 0.1; done
ws_url=$(sed -n 's/^ws=//p' "$demo/fake.out")
rest_url=$(sed -n 's/^rest=//p' "$demo/fake.out")
echo "fake exchange: $ws_url $rest_url"

sed -e "s|wss://stream.binance.com:9443|$ws_url|" \
    -e "s|https://api.binance.com|$rest_url|" \
    -e "s|\"BTCUSDT\", \"ETHUSDT\", \"SOLUSDT\"|\"BTCUSDT\", \"ETHUSDT\"|" \
    -e "s|data/parquet|$demo/parquet|; s|data/wal|$demo/wal|; s|data/quarantine|$demo/quarantine|" \
    -e "s|grace_ms = 10000|grace_ms = 2000|" \
    -e "s|^listen = \"127.0.0.1:9464\"|listen = \"\"|" \
    config.toml >"$demo/config.toml"
target/release/binance-recorder run --config "$demo/config.toml" 2>"$demo/recorder.log" &
recorder_pid=$!
echo "recording for 45 s (logs in $demo/recorder.log)"
sleep 45
kill -TERM "$recorder_pid"; wait "$recorder_pid" || true; recorder_pid=

.venv-demo/bin/python - "$demo/parquet" <<'PY'
import sys, duckdb
root = sys.argv[1]
print(duckdb.sql(f"""
    SELECT stream, symbol, hour(trade_time) AS hour, count(*) AS trades,
           min(price) AS low, max(price) AS high, sum(quantity) AS volume
    FROM read_parquet('{root}/market=spot/stream=trade/**/*.parquet', hive_partitioning = true)
    GROUP BY ALL ORDER BY ALL
"""))
print(duckdb.sql(f"""
    SELECT symbol, open_time, open, high, low, close, trade_count
    FROM read_parquet('{root}/market=spot/stream=kline_1m/**/*.parquet', hive_partitioning = true)
    ORDER BY open_time DESC, symbol LIMIT 6
"""))
PY

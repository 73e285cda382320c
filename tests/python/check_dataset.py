"""Reads a dataset written by the recorder with DuckDB, pandas, polars and
pyarrow, and compares what each sees with what the Rust side wrote.

Usage: check_dataset.py DATA_DIR EXPECTED_JSON  (run by tests/recorder/end_to_end.rs)
"""

import json
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds

TIME_COLUMNS = {"trade_time", "event_time", "recv_time", "open_time", "close_time"}
DECIMAL_COLUMNS = {"price", "quantity", "open", "high", "low", "close", "volume"}
KEYS = {"trade": "trade_id", "aggTrade": "agg_trade_id", "kline_1m": "open_time"}

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)


def micros(value):
    """Epoch microseconds of a timestamp from any of the readers."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.value // 1000
    return int(pd.Timestamp(value).value // 1000)


def compare_rows(reader, stream, rows, expected_rows):
    check(len(rows) >= len(expected_rows), f"{reader} {stream}: {len(rows)} rows, expected at least {len(expected_rows)}")
    for got, want in zip(rows, expected_rows):
        for column, wanted in want.items():
            value = got[column]
            if column in TIME_COLUMNS:
                value = micros(value)
            elif column in DECIMAL_COLUMNS:
                value = None if value is None else f"{Decimal(value):.8f}"
            elif column == "is_best_match" or column == "first_trade_id":
                value = None if value is None or value != value else value
            if value != wanted:
                check(False, f"{reader} {stream} {column}: got {value!r}, want {wanted!r}")
                return


def main():
    data_dir = Path(sys.argv[1])
    expected = json.loads(Path(sys.argv[2]).read_text())
    connection = duckdb.connect()
    for stream, want in expected.items():
        key = KEYS[stream]
        glob = f"{data_dir}/market=spot/stream={stream}/**/*.parquet"
        query = f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true)"
        count = connection.execute(f"SELECT count(*) FROM ({query})").fetchone()[0]
        check(count == want["n_rows"], f"duckdb {stream}: {count} rows, expected {want['n_rows']}")
        types = dict(connection.execute(f"SELECT column_name, column_type FROM (DESCRIBE {query})").fetchall())
        check(types.get("price", types.get("open")) == "DECIMAL(38,8)", f"duckdb {stream}: decimal type {types}")
        time_column = "open_time" if stream.startswith("kline") else "trade_time"
        check(types[time_column] == "TIMESTAMP WITH TIME ZONE", f"duckdb {stream}: time type {types[time_column]}")
        for partition in ("market", "stream", "symbol", "date"):
            check(partition in types, f"duckdb {stream}: hive column {partition} missing")
        sample = want["sample_file"]
        cursor = connection.execute(f"SELECT * FROM read_parquet('{sample}') ORDER BY {key}")
        names = [column[0] for column in cursor.description]
        duck_rows = [dict(zip(names, row)) for row in cursor.fetchall()]
        compare_rows("duckdb", stream, duck_rows, want["sample_rows"])

        frame = pd.read_parquet(sample)
        check(str(frame[time_column].dtype) == "datetime64[us, UTC]", f"pandas {stream}: dtype {frame[time_column].dtype}")
        frame = frame.astype(object).where(frame.notna(), None)
        compare_rows("pandas", stream, frame.to_dict("records"), want["sample_rows"])

        polars_frame = pl.read_parquet(sample)
        check(str(polars_frame.schema[time_column]).startswith("Datetime"), f"polars {stream}: {polars_frame.schema[time_column]}")
        compare_rows("polars", stream, polars_frame.to_dicts(), want["sample_rows"])

        dataset = ds.dataset(data_dir / "market=spot" / f"stream={stream}", format="parquet", partitioning="hive")
        table = dataset.to_table()
        check(table.num_rows == want["n_rows"], f"pyarrow {stream}: {table.num_rows} rows")
        check(table.schema.field("symbol").type == pa.string(), f"pyarrow {stream}: symbol type {table.schema.field('symbol').type}")
        check(len(dataset.files) == want["n_files"], f"pyarrow {stream}: {len(dataset.files)} files")
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"python readers agree on {len(expected)} streams")


if __name__ == "__main__":
    main()

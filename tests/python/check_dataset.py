"""The reader matrix of docs/DATASET.md ("How it is read"): every call listed
there, run on a dataset the recorder wrote, must return every row, `symbol`
as a column where the reader takes partitions from the path, exact decimals
and UTC-aware microsecond times. What each reader sees is compared with what
the Rust side wrote.

Usage: check_dataset.py DATA_DIR EXPECTED_JSON [MARKET]  (run by tests/recorder/end_to_end.rs
and tests/recorder/markets.rs; MARKET is the `market=` folder, `spot` unless given)

EXPECTED_JSON maps each stream folder name (`trade`, `kline_1m`, ...) to
`n_files`, `n_rows`, `n_rows_by_symbol`, `n_rest_rows`, `sample_file` (one
file's path), `sample_symbol`, `n_sample_rows` and `sample_rows` (the first
rows of that file as Rust read them).
"""

import datetime
import json
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

TIME_COLUMNS = {"trade_time", "event_time", "recv_time", "open_time", "close_time"}
DECIMAL_COLUMNS = {
    "price", "quantity", "open", "high", "low", "close", "volume", "quote_volume",
    "taker_buy_base_volume", "taker_buy_quote_volume",
}
PARTITION_KEYS = ("market", "stream", "symbol", "date")
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
    return condition


def key_column(stream):
    return {"trade": "trade_id", "aggTrade": "agg_trade_id"}.get(stream, "open_time")


def is_missing(value):
    return value is None or value is pd.NaT or (isinstance(value, float) and value != value)


def micros(value, where):
    """Epoch microseconds of a UTC-aware time from any reader; a naive time
    is a failure (the contract promises UTC-aware times)."""
    if is_missing(value):
        return None
    if isinstance(value, pd.Timestamp):
        check(value.tz is not None, f"{where}: naive pandas time {value!r}")
        return value.value // 1000
    if isinstance(value, datetime.datetime):
        if not check(value.tzinfo is not None and value.utcoffset() == datetime.timedelta(0),
                     f"{where}: time not UTC-aware: {value!r}"):
            return None
        return (value - EPOCH) // datetime.timedelta(microseconds=1)
    check(False, f"{where}: time of type {type(value).__name__}: {value!r}")
    return None


def plain(column, value, where):
    """A reader's value in the form the expected JSON uses."""
    if column in TIME_COLUMNS:
        return micros(value, f"{where} {column}")
    if is_missing(value):
        return None
    if column in DECIMAL_COLUMNS:
        check(isinstance(value, Decimal), f"{where} {column}: {type(value).__name__}, not an exact decimal")
        return f"{Decimal(value):.8f}"
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def compare_rows(where, stream, rows, expected):
    """The rows a reader returned for the sample file's symbol (all rows for
    a one-file read) hold every expected row with equal values."""
    key = key_column(stream)
    by_key = {}
    for row in rows:
        by_key[plain(key, row[key], where)] = row
    for want in expected["sample_rows"]:
        got = by_key.get(want[key])
        if not check(got is not None, f"{where}: row {key}={want[key]} missing"):
            return
        for column, wanted in want.items():
            value = plain(column, got[column], where)
            if not check(value == wanted, f"{where} {column} of {want[key]}: got {value!r}, want {wanted!r}"):
                return


def check_symbols(where, symbols, expected):
    counts = Counter(str(symbol) for symbol in symbols)
    check(dict(counts) == expected["n_rows_by_symbol"],
          f"{where}: rows by symbol {dict(counts)}, want {expected['n_rows_by_symbol']}")


def check_arrow_schema(where, schema, stream):
    for field in schema:
        if field.name in TIME_COLUMNS:
            check(field.type == pa.timestamp("us", tz="UTC"), f"{where}: {field.name} is {field.type}")
        if field.name in DECIMAL_COLUMNS:
            check(field.type == pa.decimal128(38, 8), f"{where}: {field.name} is {field.type}")


def duckdb_reader(connection, folder, stream, expected):
    where = f"duckdb {stream}"
    query = f"SELECT * FROM read_parquet('{folder}/**/*.parquet', hive_partitioning = true)"
    types = dict(connection.execute(f"SELECT column_name, column_type FROM (DESCRIBE {query})").fetchall())
    for column, column_type in types.items():
        if column in TIME_COLUMNS:
            check(column_type == "TIMESTAMP WITH TIME ZONE", f"{where}: {column} is {column_type}")
        if column in DECIMAL_COLUMNS:
            check(column_type == "DECIMAL(38,8)", f"{where}: {column} is {column_type}")
    for partition in PARTITION_KEYS:
        check(partition in types, f"{where}: hive column {partition} missing: {list(types)}")
    cursor = connection.execute(query)
    names = [column[0] for column in cursor.description]
    rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    check(len(rows) == expected["n_rows"], f"{where}: {len(rows)} rows, want {expected['n_rows']}")
    check_symbols(where, [row["symbol"] for row in rows], expected)
    check(sum(row["source"] == "rest" for row in rows) == expected["n_rest_rows"], f"{where}: rows from REST")
    compare_rows(where, stream, [row for row in rows if row["symbol"] == expected["sample_symbol"]], expected)


def pandas_readers(folder, stream, expected):
    where = f"pandas.read_parquet(folder) {stream}"
    frame = pd.read_parquet(folder)
    check(len(frame) == expected["n_rows"], f"{where}: {len(frame)} rows, want {expected['n_rows']}")
    check("symbol" in frame.columns, f"{where}: no symbol column: {list(frame.columns)}")
    for column in TIME_COLUMNS & set(frame.columns):
        check(str(frame[column].dtype) == "datetime64[us, UTC]", f"{where}: {column} dtype {frame[column].dtype}")
    if "symbol" in frame.columns:
        check_symbols(where, frame["symbol"], expected)
        sample = frame[frame["symbol"].astype(str) == expected["sample_symbol"]]
        compare_rows(where, stream, sample.to_dict("records"), expected)

    where = f"pandas.read_parquet(file) {stream}"
    frame = pd.read_parquet(expected["sample_file"])
    check(len(frame) == expected["n_sample_rows"], f"{where}: {len(frame)} rows, want {expected['n_sample_rows']}")
    for column in TIME_COLUMNS & set(frame.columns):
        check(str(frame[column].dtype) == "datetime64[us, UTC]", f"{where}: {column} dtype {frame[column].dtype}")
    compare_rows(where, stream, frame.to_dict("records"), expected)


def pyarrow_readers(folder, stream, expected):
    for where, table in [
        (f"pyarrow.parquet.read_table {stream}", pq.read_table(folder)),
        (f"pyarrow.dataset {stream}", ds.dataset(folder, format="parquet", partitioning="hive").to_table()),
    ]:
        check(table.num_rows == expected["n_rows"], f"{where}: {table.num_rows} rows, want {expected['n_rows']}")
        check_arrow_schema(where, table.schema, stream)
        if not check("symbol" in table.column_names, f"{where}: no symbol column: {table.column_names}"):
            continue
        symbols = table.column("symbol").to_pylist()
        check_symbols(where, symbols, expected)
        rows = [row for row in table.to_pylist() if row["symbol"] == expected["sample_symbol"]]
        compare_rows(where, stream, rows, expected)
    dataset = ds.dataset(folder, format="parquet", partitioning="hive")
    check(len(dataset.files) == expected["n_files"], f"pyarrow.dataset {stream}: {len(dataset.files)} files, want {expected['n_files']}")


def polars_readers(folder, stream, expected):
    for where, frame in [
        (f"polars.read_parquet {stream}", pl.read_parquet(folder)),
        (f"polars.scan_parquet {stream}",
         pl.scan_parquet(f"{folder}/**/*.parquet", hive_partitioning=True).collect()),
    ]:
        check(frame.height == expected["n_rows"], f"{where}: {frame.height} rows, want {expected['n_rows']}")
        for column in TIME_COLUMNS & set(frame.columns):
            check(frame.schema[column] == pl.Datetime("us", "UTC"), f"{where}: {column} is {frame.schema[column]}")
        for column in DECIMAL_COLUMNS & set(frame.columns):
            check(frame.schema[column] == pl.Decimal(38, 8), f"{where}: {column} is {frame.schema[column]}")
        if not check("symbol" in frame.columns, f"{where}: no symbol column: {frame.columns}"):
            continue
        check_symbols(where, frame["symbol"].to_list(), expected)
        sample = frame.filter(pl.col("symbol").cast(pl.String) == expected["sample_symbol"])
        compare_rows(where, stream, sample.to_dicts(), expected)


def filtered_reads(connection, folder, stream):
    """A filter on the key (trades, aggTrades) and on a price returns what
    filtering every row does, in every reader: they skip files and row
    groups by the chunk statistics, which hold each bound once (in
    `min_value` and `max_value`, not in the deprecated `min` and `max`)."""
    table = pq.read_table(folder)
    columns = [column for column in ("trade_id", "agg_trade_id", "price", "high") if column in table.column_names]
    for column in columns:
        values = sorted(value for value in table.column(column).to_pylist() if value is not None)
        if not check(values, f"{stream}: no {column} to filter on"):
            continue
        for bound in (values[len(values) // 2], values[-1]):
            want = sum(1 for value in values if value >= bound)
            where = f"{stream} where {column} >= {bound}"
            got = connection.execute(
                f"SELECT count(*) FROM read_parquet('{folder}/**/*.parquet', hive_partitioning = true) "
                f"WHERE {column} >= {bound}").fetchone()[0]
            check(got == want, f"duckdb {where}: {got} rows, want {want}")
            scalar = pa.scalar(bound, table.schema.field(column).type)
            got = ds.dataset(folder, format="parquet", partitioning="hive").to_table(
                filter=pc.field(column) >= scalar).num_rows
            check(got == want, f"pyarrow.dataset {where}: {got} rows, want {want}")
            got = len(pd.read_parquet(folder, filters=[(column, ">=", bound)]))
            check(got == want, f"pandas.read_parquet(filters) {where}: {got} rows, want {want}")
            got = pl.scan_parquet(f"{folder}/**/*.parquet", hive_partitioning=True).filter(
                pl.col(column) >= bound).collect().height
            check(got == want, f"polars.scan_parquet.filter {where}: {got} rows, want {want}")


def main():
    data_dir = Path(sys.argv[1])
    expected = json.loads(Path(sys.argv[2]).read_text())
    market = sys.argv[3] if len(sys.argv) > 3 else "spot"
    connection = duckdb.connect()
    for stream, want in expected.items():
        folder = data_dir / f"market={market}" / f"stream={stream}"
        for reader in (
            lambda: duckdb_reader(connection, folder, stream, want),
            lambda: pandas_readers(folder, stream, want),
            lambda: pyarrow_readers(folder, stream, want),
            lambda: polars_readers(folder, stream, want),
            lambda: filtered_reads(connection, folder, stream),
        ):
            try:
                reader()
            except Exception as error:  # one reader's failure must not hide the others'
                failures.append(f"{stream}: {type(error).__name__}: {error}")
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(
        f"duckdb {duckdb.__version__}, pandas {pd.__version__}, pyarrow {pa.__version__}, "
        f"polars {pl.__version__}: every reader agrees on {len(expected)} streams of {market}"
    )


if __name__ == "__main__":
    main()

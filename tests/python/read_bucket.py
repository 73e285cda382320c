"""Reads the dataset in place from an S3-compatible server with the calls
docs/OPERATIONS.md "Querying the bucket" gives: pyarrow's S3FileSystem,
pandas (an s3:// URL through s3fs, and a folder through the pyarrow
filesystem) and polars (scan_parquet of an s3:// glob, polars' own client),
and checks the row count of each stream folder against what the Rust side
read from the local copy.

Usage: read_bucket.py ENDPOINT BUCKET/PREFIX EXPECTED_JSON
(run by tests/recorder/upload.rs; credentials from AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY). EXPECTED_JSON maps a stream folder name to its rows.

DuckDB's httpfs extension is not checked: it is downloaded from DuckDB's
extension repository at first use, which the tests cannot reach, and the
PyPI packages that ship it stop at DuckDB 1.5.5 (extensions load only into
the release they were built for; the tests pin 2.0.1).
"""

import json
import os
import sys
from urllib.parse import urlparse

import pandas
import polars
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

endpoint, root, expected_text = sys.argv[1], sys.argv[2], sys.argv[3]
expected = json.loads(expected_text)
url = urlparse(endpoint)
s3 = pafs.S3FileSystem(
    access_key=os.environ["AWS_ACCESS_KEY_ID"],
    secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    region=os.environ.get("AWS_REGION", "us-east-1"),
    endpoint_override=url.netloc,
    scheme=url.scheme,
)
region = os.environ.get("AWS_REGION", "us-east-1")
# pandas: s3fs's options.
pandas_options = {
    "key": os.environ["AWS_ACCESS_KEY_ID"],
    "secret": os.environ["AWS_SECRET_ACCESS_KEY"],
    "endpoint_url": endpoint,
    "client_kwargs": {"region_name": region},
}
# polars: its own object store client's options.
polars_options = {
    "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
    "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
    "aws_region": region,
    "aws_endpoint_url": endpoint,
    "aws_allow_http": "true",
}
failures = []


def check(reader, stream, got, n_rows, columns):
    if got != n_rows:
        failures.append(f"{reader} {stream}: {got} rows, expected {n_rows}")
    if "symbol" not in columns:
        failures.append(f"{reader} {stream}: no symbol column from the partition path")
    print(f"{reader} {stream}: {got} rows")


for stream, n_rows in expected.items():
    folder = f"{root}/market=spot/stream={stream}"
    table = pq.read_table(folder, filesystem=s3)
    check("pyarrow read_table", stream, table.num_rows, n_rows, table.column_names)
    dataset = ds.dataset(folder, filesystem=s3, format="parquet", partitioning="hive")
    scanned = dataset.to_table()
    check("pyarrow dataset", stream, scanned.num_rows, n_rows, scanned.column_names)
    frame = pandas.read_parquet(f"s3://{folder}", storage_options=pandas_options)
    check("pandas s3fs", stream, len(frame), n_rows, frame.columns)
    frame = pandas.read_parquet(folder, filesystem=s3)
    check("pandas pyarrow filesystem", stream, len(frame), n_rows, frame.columns)
    lazy = polars.scan_parquet(
        f"s3://{folder}/**/*.parquet",
        hive_partitioning=True,
        storage_options=polars_options,
    )
    counted = lazy.select(polars.len()).collect().item()
    check("polars scan_parquet", stream, counted, n_rows, lazy.collect_schema().names())
if failures:
    print("\n".join(failures))
    sys.exit(1)

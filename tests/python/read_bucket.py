"""Reads the dataset in place from an S3-compatible server with pyarrow's
S3FileSystem (the call docs/OPERATIONS.md gives) and checks the row count of
each stream folder against what the Rust side read from the local copy.

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
failures = []
for stream, n_rows in expected.items():
    folder = f"{root}/market=spot/stream={stream}"
    table = pq.read_table(folder, filesystem=s3)
    dataset = ds.dataset(folder, filesystem=s3, format="parquet", partitioning="hive")
    scanned = dataset.to_table()
    if table.num_rows != n_rows or scanned.num_rows != n_rows:
        failures.append(f"{stream}: read_table {table.num_rows}, dataset {scanned.num_rows}, expected {n_rows}")
    if "symbol" not in table.column_names:
        failures.append(f"{stream}: no symbol column from the partition path")
    print(f"pyarrow S3FileSystem {stream}: {table.num_rows} rows")
if failures:
    print("\n".join(failures))
    sys.exit(1)

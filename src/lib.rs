pub mod binance;
pub mod domain;
pub mod parquet_out;
pub mod wal;
pub mod config;

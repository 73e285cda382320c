pub mod binance;
pub mod domain;

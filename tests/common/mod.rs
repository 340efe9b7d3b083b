//! Test support: the real `weir` binary on loopback ports, real upstream HTTP servers,
//! and a small real HTTP/1.1 client. Everything binds 127.0.0.1 only. One module per
//! concern; everything is re-exported here for `use common::*`.
#![allow(dead_code, unused_imports)] // each test binary uses a different part

mod certs;
mod client;
mod h2raw;
mod legs;
mod metrics;
mod ocsp;
mod ports;
mod process;
mod raw;
mod upstream;

pub use certs::*;
pub use client::*;
pub use h2raw::*;
pub use legs::*;
pub use metrics::*;
pub use ocsp::*;
pub use ports::*;
pub use process::*;
pub use raw::*;
pub use upstream::*;

pub const WEIR: &str = env!("CARGO_BIN_EXE_weir");

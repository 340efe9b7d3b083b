//! weir: an edge gateway on Pingora.
//!
//! The pipeline, one module a step: config text (`config`) → validated, compiled,
//! immutable routing snapshot (`snapshot`, using `vhost` and `schedule`) → held in an
//! `ArcSwap` and read once per request by the proxy (`proxy`, with `forward` for the
//! forwarding headers) → assembled into a Pingora server (`server`), where each
//! accepted connection passes `accept` (counting, and the TLS handshake with `tls`'s
//! certificates and policy) on its way to the proxy; driven by the command line (`cli`).

pub mod accept;
pub mod accesslog;
pub mod admin;
pub mod balance;
pub mod cli;
pub mod condition;
pub mod config;
pub mod diag;
pub mod exposition;
pub mod forward;
pub mod health;
pub mod metrics;
pub mod prepare;
pub mod probe;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod rewrite;
pub mod schedule;
pub mod server;
pub mod snapshot;
pub mod startup;
pub mod sticky;
pub mod suggest;
pub mod tcp;
pub mod tls;
pub mod upstream;
pub mod vhost;

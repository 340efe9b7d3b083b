//! weir: an edge gateway on Pingora.
//!
//! The pipeline, one module a step:
//!
//! 1. **Config text → parsed config.** `config` (schema, `config::load` reading files
//!    within bounds, `config::shape` measuring YAML before it is deserialized), with
//!    `diag` for errors that name file, line and column and `suggest` for "did you mean".
//! 2. **Outside inputs.** `prepare`: DNS answers and generated certificates, cached.
//! 3. **Snapshot, built by a pure function.** `snapshot` (`snapshot::build`), compiling
//!    `vhost` tables, `schedule`s (weights), `condition`s, `rewrite`s, `sticky` cookies,
//!    `balance` pickers over `upstream`s, `tls` certificate stores; `startup` holds the
//!    settings only a restart applies.
//! 4. **One apply step.** `reload`: joins live state (`health` registry, `metrics`
//!    handles, TLS endpoints) to the new snapshot and swaps it into an `ArcSwap`; the file
//!    watcher, `SIGHUP`, DNS refreshes and the admin API all go through it.
//! 5. **Requests.** `server` assembles Pingora; `accept` takes each connection (PROXY
//!    header via `proxy_protocol`, TLS via `tls`); `proxy` is the `ProxyHttp`
//!    implementation reading one snapshot per request, with `forward` for forwarding
//!    headers and `accesslog`; `tcp` serves TCP gateways.
//! 6. **Around it.** `probe` runs active health checks; `admin` serves health, metrics
//!    (`exposition`) and the gateway API; `cli` is the command line.

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
pub mod request;
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

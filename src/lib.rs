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
//!    `balance` pickers over `upstream`s (and `external` targets), `tls` certificate stores; `startup` holds the
//!    settings only a restart applies.
//! 4. **One apply step.** `reload`: joins live state (`health` registry, `metrics`
//!    handles, TLS endpoints) to the new snapshot and swaps it into an `ArcSwap`; the file
//!    watcher, `SIGHUP`, DNS refreshes, the admin API and the fleet's config `store`
//!    (etcd: documents joined to the local files, watched, cached) all go through it.
//! 5. **Requests.** `server` assembles Pingora; `accept` takes each connection
//!    (`connlimit`, PROXY header via `proxy_protocol`, TLS via `tls`, client
//!    certificates via `client_cert`, PEM certificate lists via `pem`, OCSP staples from `ocsp`, shared session-ticket
//!    keys from `tickets`,
//!    certificates issued by `acme`, whose
//!    challenges `challenge` answers) and runs HTTP/1
//!    connections through `guard`, which holds each request to `framing`; `h1` proxies
//!    the plain HTTP/1 requests itself (idle upstream connections in `pool`), `http2`
//!    accepts HTTP/2 connections and has `h1` serve their plain streams, and `proxy` is
//!    the `ProxyHttp` implementation, for everything else, reading one snapshot per request, with `answer` for
//!    what weir answers itself, `ratelimit`, `forward` for forwarding headers, `headers` for
//!    header rules, `retry` for retries and their budget, `outlier` for
//!    ejecting failing instances, and `accesslog`; `tcp` serves TCP gateways; `access` holds gateways' allow/deny lists, `auth`
//!    basic auth, `compress` response compression, `mirror` traffic
//!    mirroring, `trace` distributed tracing.
//! 6. **Around it.** `probe` runs active health checks; `admin` serves health, metrics
//!    (`exposition`) and the gateway API; `cli` is the command line; `lifecycle` is how
//!    a serving process drains and stops, `sdnotify` what it tells systemd; `master` supervises
//!    workers and re-executes itself for upgrades; `control` is the CLI's side of
//!    `weir reload`, `weir healthcheck` and `weir upgrade`.

pub(crate) mod accept;
pub(crate) mod access;
pub(crate) mod accesslog;
pub(crate) mod acme;
pub(crate) mod admin;
pub(crate) mod answer;
pub(crate) mod auth;
pub(crate) mod balance;
pub(crate) mod challenge;
pub mod cli;
pub(crate) mod client_cert;
pub(crate) mod compress;
pub(crate) mod condition;
pub mod config;
pub(crate) mod connlimit;
pub(crate) mod control;
pub(crate) mod diag;
pub(crate) mod exposition;
pub(crate) mod external;
pub(crate) mod forward;
pub(crate) mod framing;
pub(crate) mod guard;
pub(crate) mod h1;
pub(crate) mod headers;
pub(crate) mod health;
pub(crate) mod http2;
pub(crate) mod lifecycle;
pub(crate) mod master;
pub(crate) mod metrics;
pub(crate) mod mirror;
pub(crate) mod ocsp;
pub(crate) mod outlier;
pub(crate) mod pem;
pub(crate) mod pool;
pub mod prepare;
pub(crate) mod probe;
pub(crate) mod proxy;
pub(crate) mod proxy_protocol;
pub(crate) mod ratelimit;
pub(crate) mod reload;
pub mod request;
pub(crate) mod retry;
pub(crate) mod rewrite;
pub(crate) mod schedule;
pub(crate) mod sdnotify;
pub(crate) mod server;
pub mod snapshot;
pub(crate) mod startup;
pub(crate) mod sticky;
pub(crate) mod store;
pub(crate) mod suggest;
pub(crate) mod tcp;
pub(crate) mod tickets;
pub(crate) mod tls;
pub(crate) mod trace;
pub(crate) mod upstream;
pub(crate) mod vhost;

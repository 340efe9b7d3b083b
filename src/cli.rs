//! The command line: `weir [run] [-c FILE] [-d] [-u]`, `weir check [-c FILE]`,
//! `weir --version`. The config path comes from `-c`, a positional FILE, `WEIR_CONFIG`,
//! or `conf/weir.yaml`, in that order.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::load::{load, Loaded};
use crate::diag::Diagnostics;
use crate::prepare::Caches;
use crate::server::{self, RunOptions};
use crate::snapshot::{build, Snapshot, Target};

const DEFAULT_CONFIG: &str = "conf/weir.yaml";

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "An edge gateway on Pingora",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run in the foreground (the default).
    Run(RunArgs),
    /// Validate the config and every file it names, as `run` would; print `ok` (and any
    /// warnings) or every error.
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Fail on warnings too (an unresolvable host, a condition that looks misspelt).
    #[arg(long)]
    strict: bool,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The main config file.
    #[arg(short = 'c', long = "config", env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// The main config file (same as -c).
    #[arg(value_name = "FILE", conflicts_with = "config")]
    file: Option<PathBuf>,
}

impl ConfigArg {
    fn path(&self) -> PathBuf {
        self.file
            .clone()
            .or_else(|| self.config.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Run in the background (Pingora's daemon mode).
    #[arg(short = 'd', long)]
    daemon: bool,
    /// Take over the listening sockets of a running weir (zero-downtime upgrade).
    #[arg(short = 'u', long)]
    upgrade: bool,
}

fn init_logging() {
    let env = env_logger::Env::default().default_filter_or("info");
    env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .init();
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check(arg)) => check(&arg),
        Some(Command::Run(args)) => run(&args),
        None => run(&cli.run),
    }
}

/// What `run` does before it binds: load, prepare, build.
fn load_and_build(path: &std::path::Path) -> Result<(Loaded, Snapshot), Diagnostics> {
    let loaded = load(path)?;
    let inputs = Caches::default().prepare(&loaded.config);
    let snapshot = build(&loaded, &inputs)?;
    Ok((loaded, snapshot))
}

fn check(args: &CheckArgs) -> i32 {
    match load_and_build(&args.config.path()) {
        Ok((loaded, snapshot)) => {
            for w in snapshot.warnings.iter() {
                eprintln!("warning: {w}");
            }
            if args.strict && !snapshot.warnings.is_empty() {
                eprintln!("refused: --strict fails on warnings");
                return 1;
            }
            println!("ok");
            println!("{}", summary(&loaded, &snapshot));
            0
        }
        Err(errors) => {
            eprintln!("{errors}");
            1
        }
    }
}

/// The one-line summary `weir check` prints after `ok`.
fn summary(loaded: &Loaded, s: &Snapshot) -> String {
    let routes: usize = s.gateways.iter().map(|g| g.routes.len()).sum();
    let instances: usize = s
        .gateways
        .iter()
        .flat_map(|g| &g.routes)
        .map(|r| match &r.target {
            Target::Pool(p) => p.instances.len(),
            _ => 0,
        })
        .sum();
    let certs: Vec<_> = s
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref())
        .flat_map(|t| t.certs.iter())
        .collect();
    let tls = match certs.iter().map(|c| crate::tls::days_left(c)).min() {
        Some(days) => format!(
            ", {} certificate(s), the first to expire in {days} day(s)",
            certs.len()
        ),
        None => String::new(),
    };
    format!(
        "{} file(s), {} listener(s), {} gateway(s), {} virtual host(s), {} route(s), {} instance(s){tls}",
        loaded.files.len(),
        s.listeners.len(),
        s.gateways.len(),
        s.vhosts.len(),
        routes,
        instances
    )
}

fn run(args: &RunArgs) -> i32 {
    init_logging();
    let options = RunOptions {
        daemon: args.daemon,
        upgrade: args.upgrade,
    };
    match server::run(&args.config.path(), options) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts() {
        let loaded = crate::config::load::load_from_str(
            std::path::Path::new("t.yaml"),
            "listeners: { http: { bind: \"127.0.0.1:8080\" } }\ngateways:\n- name: g\n  virtual_hosts: [g.test]\n  routes:\n    a: { respond: {status: 200} }\n    c: { instances: [\"127.0.0.1:9\", {host: 127.0.0.1, port: 10, weight: 3}] }\n",
        )
        .unwrap();
        let s = build(&loaded, &Default::default()).unwrap();
        assert_eq!(
            summary(&loaded, &s),
            "1 file(s), 1 listener(s), 1 gateway(s), 1 virtual host(s), 2 route(s), 2 instance(s)"
        );
    }
}

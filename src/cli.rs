//! The command line (SPEC §5): `weir [run] [-c FILE] [-d] [-u]`, `weir check [-c FILE]`,
//! `weir --version`. The config path comes from `-c`, a positional FILE, `WEIR_CONFIG`,
//! or `conf/weir.yaml`, in that order.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::server::{self, RunOptions};
use crate::snapshot::check_summary;

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
    /// Validate the config and every file it names; print `ok` or every error.
    Check(ConfigArg),
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

fn check(arg: &ConfigArg) -> i32 {
    match server::load_snapshot(&arg.path()) {
        Ok(snapshot) => {
            println!("ok");
            println!("{}", check_summary(&snapshot));
            0
        }
        Err(errors) => {
            eprintln!("{errors}");
            1
        }
    }
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

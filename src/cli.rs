//! The command line: `weir [run] [-c FILE] [-d] [-u] [--master]`, `weir check [-c FILE]`,
//! `weir reload`, `weir healthcheck`, `weir upgrade`, `weir status`,
//! `weir config push|pull DIR`, `weir --version`. The config path comes from `-c`, a positional FILE, `WEIR_CONFIG`,
//! or `conf/weir.yaml`, in that order.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::load::Loaded;
use crate::server::{self, RunOptions};
use crate::snapshot::{Snapshot, Target};

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
    /// Ask the running weir (through its admin listener) to reload its files; wait for
    /// the outcome; exit 1 with the errors if it refused them.
    Reload(AdminArgs),
    /// Exit 0 when the running weir is ready (`/readyz` answers 200), 1 otherwise.
    Healthcheck(AdminArgs),
    /// Replace the running weir (started with --master) by the binary now on disk, with
    /// no failed request; wait for the outcome.
    Upgrade(MasterArgs),
    /// Show the master's PID and its workers.
    Status(MasterArgs),
    /// Move gateway files into and out of the config store (`config_source: etcd`).
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Write the gateways of DIR's *.yaml, *.yml and *.json files to the store, after
    /// checking them whole with the local config (nothing is written if they fail).
    Push(SyncArgs),
    /// Write each gateway in the store to DIR/NAME.yaml.
    Pull(SyncArgs),
}

#[derive(Debug, clap::Args)]
struct SyncArgs {
    /// The directory of gateway files.
    dir: PathBuf,
    /// The main config file (it names the store).
    #[arg(short = 'c', long = "config", env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// push: delete the stored gateways DIR does not hold; pull: remove the *.yaml
    /// files in DIR the store does not hold.
    #[arg(long)]
    prune: bool,
}

#[derive(Debug, clap::Args)]
struct AdminArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The admin listener's address (default: admin.bind from the config).
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
}

#[derive(Debug, clap::Args)]
struct ControlArgs {
    /// The master's control socket.
    #[arg(long, env = "WEIR_CONTROL_SOCKET")]
    control_socket: Option<PathBuf>,
}

impl ControlArgs {
    /// The socket given, else the one `config` names, else the default.
    fn path(&self, config: &std::path::Path) -> PathBuf {
        crate::control::control_of(config, self.control_socket.clone())
    }
}

/// `upgrade` and `status`: the master is found as `run --master` placed it.
#[derive(Debug, clap::Args)]
struct MasterArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Fail on warnings too (an unresolvable host, a condition that looks misspelt).
    #[arg(long)]
    strict: bool,
    /// Check what the config store (etcd) holds now, with the local config; fail if
    /// etcd cannot be reached.
    #[arg(long)]
    etcd: bool,
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
    /// Run as a master that holds the sockets and supervises a worker: `weir upgrade`
    /// then replaces the binary with no failed request and the same PID.
    #[arg(long, conflicts_with_all = ["daemon", "upgrade"])]
    master: bool,
    #[command(flatten)]
    control: ControlArgs,
    /// Process log format.
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// weir's own lines at info; Pingora's lifecycle chatter only from warn. The socket
/// hand-over's own retry messages are off: the master reports a failed hand-over.
const DEFAULT_LOG: &str =
    "info,pingora=warn,pingora_core=warn,pingora_proxy=warn,pingora_core::server::transfer_fd=off";

fn init_logging(format: LogFormat) {
    let env = env_logger::Env::default().default_filter_or(DEFAULT_LOG);
    let mut builder = env_logger::Builder::from_env(env);
    builder.target(env_logger::Target::Stderr);
    match format {
        LogFormat::Text => {
            builder.format_timestamp_millis();
        }
        LogFormat::Json => {
            builder.format(|out, record| {
                use std::io::Write;
                let line = serde_json::json!({
                    "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                    "level": record.level().as_str(),
                    "target": record.target(),
                    "pid": std::process::id(),
                    "msg": record.args().to_string(),
                });
                writeln!(out, "{line}")
            });
        }
    }
    builder.init();
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check(arg)) => check(&arg),
        Some(Command::Run(args)) => run(&args),
        Some(Command::Reload(args)) => admin_command(&args, crate::control::reload),
        Some(Command::Healthcheck(args)) => admin_command(&args, crate::control::healthcheck),
        Some(Command::Upgrade(args)) => master_command(&args, "upgrade", UPGRADE_WAIT),
        Some(Command::Status(args)) => master_command(&args, "status", Duration::from_secs(5)),
        Some(Command::Config(c)) => config_command(&c),
        None => run(&cli.run),
    }
}

/// A new worker has up to a minute to start; then the check and the hand-over.
const UPGRADE_WAIT: Duration = Duration::from_secs(90);

fn admin_command(
    args: &AdminArgs,
    ask: fn(&crate::control::AdminTarget) -> Result<String, String>,
) -> i32 {
    let outcome = crate::control::admin_of(&args.config.path(), args.admin).and_then(|t| ask(&t));
    report(outcome)
}

fn master_command(args: &MasterArgs, command: &str, wait: Duration) -> i32 {
    let control = args.control.path(&args.config.path());
    report(crate::control::ask_master(&control, command, wait))
}

fn report(outcome: Result<String, String>) -> i32 {
    match outcome {
        Ok(m) => {
            println!("{m}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn config_command(command: &ConfigCommand) -> i32 {
    let (args, push) = match command {
        ConfigCommand::Push(a) => (a, true),
        ConfigCommand::Pull(a) => (a, false),
    };
    let config = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    report(if push {
        crate::store::push::push(&config, &args.dir, args.prune)
    } else {
        crate::store::push::pull(&config, &args.dir, args.prune)
    })
}

fn check(args: &CheckArgs) -> i32 {
    let path = args.config.path();
    let outcome = if args.etcd {
        crate::store::push::check(&path).map(|(l, s, note)| (l, s, Some(note)))
    } else {
        crate::reload::load_once(&path)
            .map(|(l, s)| (l, s, None))
            .map_err(|d| d.to_string())
    };
    match outcome {
        Ok((loaded, snapshot, note)) => {
            for w in snapshot.warnings.iter() {
                eprintln!("warning: {w}");
            }
            if args.strict && !snapshot.warnings.is_empty() {
                eprintln!("refused: --strict fails on warnings");
                return 1;
            }
            println!("ok");
            println!("{}", summary(&loaded, &snapshot));
            if let Some(note) = note {
                println!("{note}");
            }
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
    init_logging(args.log_format);
    if args.master {
        let places = crate::master::Places {
            control: args.control.path(&args.config.path()),
        };
        return crate::master::run(&args.config.path(), places);
    }
    collect_memory();
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

/// How often freed memory is handed back to the system.
const COLLECT_EVERY: Duration = Duration::from_secs(2);

/// mimalloc returns freed pages to the system only when the thread that freed them
/// allocates again; after a burst of connections closes, worker threads may stay quiet
/// for long. A collection now and then returns that memory. (Not in the master, which
/// stays single-threaded.)
fn collect_memory() {
    std::thread::Builder::new()
        .name("weir-mem".to_string())
        .spawn(|| loop {
            std::thread::sleep(COLLECT_EVERY);
            // SAFETY: mi_collect takes no pointers and may be called from any thread.
            unsafe { libmimalloc_sys::mi_collect(false) };
        })
        .ok();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::build;

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

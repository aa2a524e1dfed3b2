//! The `fleet-commander` binary: parse, load the config, start, wait for the
//! signal, drain. The service is `fleet_commander`; the other subcommands
//! are in [`cli`].
//!
//! Exit status: 0 a clean stop; 64 an invalid configuration (EX_USAGE); 1
//! any other failure. (A commander fenced by a newer one does not exit: it
//! stands by, and leads again if the lease comes free.)

mod cli;

use clap::{Parser, ValueEnum};
use cli::Command;
use fleet_commander::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// The commander allocates and frees small buffers for every message; mimalloc
/// does that with less CPU than the system allocator.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An invalid configuration (sysexits' EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(version, about = "Commands a fleet of AI agents through Redis")]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "FLEET_CONFIG", default_value = Config::DEFAULT_PATH)]
    config: PathBuf,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Print JSON (what the HTTP API serves) instead of tables and lines.
    #[arg(long, global = true)]
    json: bool,
    /// The commander's HTTP API, for the commands that use it (default:
    /// http://{http.addr} from the config, or FLEET_HTTP_ADDR).
    #[arg(long, global = true, env = "FLEET_URL")]
    url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = Config::load(&cli.config);
    let quiet = matches!(
        cli.command,
        Command::Demo(_) | Command::Sim(_) | Command::Status
    );
    // RUST_LOG, else the config's log.level, else info (warn for the noisy commands).
    let level = config.as_ref().ok().and_then(|c| c.log.level.clone());
    let default = level.unwrap_or_else(|| if quiet { "warn" } else { "info" }.to_string());
    init_logging(cli.log_format, &default);

    if let Command::Run = cli.command {
        let config = match config.and_then(|c| c.commander_secret().map(|_| c)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        return run(config);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    cli::set_json(cli.json);
    match runtime.block_on(cli::execute(cli.command, &cli.config, cli.url)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<fleet_commander::ConfigError>().is_some() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The service: until SIGTERM or SIGINT (then a drain within
/// `fleet.shutdown_grace_ms`), a fencing, or a failure.
fn run(config: Config) -> ExitCode {
    // The HTTP API holds up to http.max_connections descriptors, plus a few
    // for Redis and the config watcher: raise the soft limit to the hard one.
    let need = config.http.max_connections as u64 + 64;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < need => eprintln!(
            "warning: the open-file limit is {n}; http.max_connections = {} needs about {need}",
            config.http.max_connections
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open-file limit: {e}"),
    }
    // The runtime's size comes from the config; TOKIO_WORKER_THREADS wins.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if config.fleet.runtime_threads > 0 && std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(config.fleet.runtime_threads);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let running = match fleet_commander::start(config, cli::shutdown_on_signal()).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let exit = running.wait().await;
        match &exit {
            fleet_commander::Exit::Clean => tracing::info!("stopped"),
            fleet_commander::Exit::Failed(why) => tracing::error!(why, "stopped on a failure"),
        }
        ExitCode::from(exit.code())
    })
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only on a terminal: a file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

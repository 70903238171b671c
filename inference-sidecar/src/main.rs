//! Entry point: parse the command line, set up logging, run the subcommand, map failure to an exit code.

use std::process::ExitCode;

use clap::Parser;
use lexserve_sidecar::cli::{Cli, Command, RouteArgs, ServeArgs};
use lexserve_sidecar::config::{ConfigFile, ServeConfig};
use lexserve_sidecar::fetch::fetch;
use lexserve_sidecar::http::server::serve;
use lexserve_sidecar::route::config::RouteSettings;
use lexserve_sidecar::route::server::route;

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(lexserve_contract::names::env::LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run_serve(args: &ServeArgs) -> ExitCode {
    let file = match &args.config {
        Some(path) => match ConfigFile::load(path) {
            Ok(file) => file,
            Err(e) => {
                tracing::error!(error = %e, "invalid configuration");
                return ExitCode::from(2);
            }
        },
        None => ConfigFile::default(),
    };
    let config = match ServeConfig::resolve(file, args) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            return ExitCode::from(2);
        }
    };
    // candle sizes its thread pool from RAYON_NUM_THREADS; set it from runtime.threads while the
    // process is still single-threaded.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet (the async runtime is built below).
        unsafe { std::env::set_var("RAYON_NUM_THREADS", config.threads.to_string()) };
    }
    run_to_exit("server", serve(config))
}

/// Runs `task` on a multi-threaded runtime; its error is logged as `what` failing.
fn run_to_exit<E: std::fmt::Display>(
    what: &str,
    task: impl std::future::Future<Output = Result<(), E>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{what} failed");
            ExitCode::FAILURE
        }
    }
}

fn run_route(args: &RouteArgs) -> ExitCode {
    let settings = match RouteSettings::resolve(args) {
        Ok(settings) => settings,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            return ExitCode::from(2);
        }
    };
    run_to_exit("router", route(settings))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match &cli.command {
        Command::Serve(args) => run_serve(args),
        Command::Route(args) => run_route(args),
        Command::Fetch(args) => match fetch(args) {
            Ok(fetched) => {
                tracing::info!(path = %fetched.path.display(), sha256 = %fetched.sha256, "fetched");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "fetch failed");
                ExitCode::FAILURE
            }
        },
    }
}

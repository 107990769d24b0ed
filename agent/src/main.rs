//! `meshgate-agent`: a node replica or a client device, as its token says.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use meshgate_agent::{config::RunArgs, leftovers, logship, runtime, state_dir, status};
use tracing_subscriber::{
    EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

#[derive(Parser)]
#[command(
    name = "meshgate-agent",
    version,
    about = "meshgate agent: a gateway node replica or a client device"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join the mesh with a token and stay connected (a systemd service runs this).
    Run(RunArgs),
    /// Remove what an agent killed in this network namespace left there (routes, rules,
    /// addresses, the MSS table); the systemd unit runs it after every stop.
    Cleanup,
    /// Show the running agent's role, epoch, Mesh IP, coordinator, routes and counters.
    Status {
        /// Print JSON for scripts instead of the human report.
        #[arg(long)]
        json: bool,
        /// The running agent's state dir (its status socket lives there).
        #[arg(long, env = "MESHGATE_STATE_DIR", default_value = "/var/lib/meshgate")]
        state_dir: PathBuf,
        /// How long to wait for the agent's answer.
        #[arg(long, env = "MESHGATE_STATUS_TIMEOUT_MS", default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Write a support archive (tar.gz, secrets redacted) of this host's meshgate state:
    /// links, addresses, rules, routes, nftables, XDP programs and maps, sysctls, status.
    Sysdump {
        /// Where to write the archive (`-`: standard output).
        #[arg(long, short, default_value = "meshgate-agent-sysdump.tar.gz")]
        out: PathBuf,
        /// The running agent's state dir (its status socket lives there).
        #[arg(long, env = "MESHGATE_STATE_DIR", default_value = "/var/lib/meshgate")]
        state_dir: PathBuf,
        /// How long to wait for the agent's status.
        #[arg(long, env = "MESHGATE_STATUS_TIMEOUT_MS", default_value_t = 2000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    // stderr follows MESHGATE_LOG; the coordinators get warnings, errors and flips
    // whatever it says (the shipping layer has its own filter).
    let (ship, outbox) = logship::channel();
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(
            EnvFilter::try_from_env("MESHGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        );
    tracing_subscriber::registry()
        .with(stderr)
        .with(ship.filtered())
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshgate-agent: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(args) => runtime::run(args, outbox).await,
            Command::Cleanup => leftovers::remove().await,
            Command::Status {
                json,
                state_dir,
                timeout_ms,
            } => {
                let report = status::query(
                    &state_dir::status_socket(&state_dir),
                    Duration::from_millis(timeout_ms),
                )
                .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", status::human(&report));
                }
                Ok(())
            }
            Command::Sysdump {
                out,
                state_dir,
                timeout_ms,
            } => {
                let bytes =
                    meshgate_agent::sysdump::collect(&state_dir, Duration::from_millis(timeout_ms))
                        .await?;
                if out.as_os_str() == "-" {
                    use std::io::Write as _;
                    std::io::stdout().write_all(&bytes)?;
                } else {
                    std::fs::write(&out, &bytes)?;
                    eprintln!("wrote {} ({} bytes)", out.display(), bytes.len());
                }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshgate-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

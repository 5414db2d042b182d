//! The `entente` command line: argument parsing and dispatch only.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use entente::config::{load_network, DEFAULT_NETWORK_FILE};
use entente::pki::{self, PkiLayout, DEFAULT_CERTS_DIR};

#[derive(Parser)]
#[command(
    name = "entente",
    version,
    about = "Federated, security-label-aware message broker for sharing classified intelligence between nations"
)]
struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the national PKI of a network.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Show who may see a marking, and why a nation or principal may or may not.
    #[command(after_help = "Examples:
  entente explain 'S//REL TO NORDIC'
  entente explain 'SECRET//REL TO GBR' --to gbr.clerk
  entente explain 'SECRET//REL TO NATO' --to TUR --from GBR --json")]
    Explain {
        /// The marking, such as 'SECRET//REL TO GBR, FRA'.
        marking: String,
        /// A nation code or principal name to decide for.
        #[arg(long)]
        to: Option<String>,
        /// The originating nation: it always may see its own messages, and
        /// its release ceilings apply to `--to NATION`.
        #[arg(long)]
        from: Option<String>,
        #[arg(long, default_value = DEFAULT_NETWORK_FILE)]
        network: PathBuf,
        /// Print one JSON object with marking, nations, principals (and
        /// decision, reason with --to).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a CA per nation, a node certificate per nation and a client
    /// certificate per principal.
    #[command(after_help = "Example:
  entente certs init --out /tmp/pki
  openssl verify -CAfile /tmp/pki/GBR/ca.crt /tmp/pki/GBR/node.crt")]
    Init {
        #[arg(long, default_value = DEFAULT_NETWORK_FILE)]
        network: PathBuf,
        /// Folder to write the PKI into.
        #[arg(long, default_value = DEFAULT_CERTS_DIR)]
        out: PathBuf,
        /// Overwrite existing keys.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Certs(CertsCommand::Init { network, out, force }) => {
            let policy = load_network(&network)?;
            let summary = pki::generate(&policy, &PkiLayout::new(&out), force)?;
            println!(
                "wrote {} national CAs, {} node certificates and {} principal certificates to {}",
                summary.nations,
                summary.nodes,
                summary.principals,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain {
            marking,
            to,
            from,
            network,
            json,
        } => {
            let policy = load_network(&network)?;
            let explanation = entente::explain::explain(&policy, &marking, to.as_deref(), from.as_deref())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&explanation).context("encoding JSON")?
                );
            } else {
                let list = |items: Vec<String>| {
                    if items.is_empty() {
                        "(none)".to_owned()
                    } else {
                        items.join(", ")
                    }
                };
                println!("marking:    {}", explanation.marking);
                println!(
                    "nations:    {}",
                    list(explanation.nations.iter().map(|n| n.to_string()).collect())
                );
                println!("principals: {}", list(explanation.principals.clone()));
                if let Some(decision) = explanation.decision {
                    match (&explanation.reason, &explanation.detail) {
                        (Some(reason), Some(detail)) => {
                            println!("decision:   {decision} ({reason}): {detail}")
                        }
                        _ => println!("decision:   {decision}"),
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

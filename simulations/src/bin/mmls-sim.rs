//! `mmls-sim`: runs MMLS scenarios in virtual time.

use anyhow::Result;
use clap::{Parser, Subcommand};
use simulations::scenario::BUILTIN;
use simulations::{report, run, RunOptions, Scenario};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mmls-sim",
    version,
    about = "Deterministic discrete-event simulator of MMLS universes (real mmls-core, real openmls)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario: a shipped name (see list-scenarios) or a TOML file.
    Run {
        scenario: String,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Override the number of members (scaling studies: the same
        /// scenario at 16, 64, 128 members).
        #[arg(long)]
        members: Option<usize>,
        /// Override the workload's duration (virtual seconds).
        #[arg(long)]
        duration: Option<f64>,
        /// Override the decoded send groups each node keeps in memory
        /// (`[engine] group_cache`): 0 keeps all of them.
        #[arg(long)]
        group_cache: Option<usize>,
        /// Where to write metrics.json, the CSV series and the SVG plots
        /// (default: mmls-sim-out/<scenario>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the metrics object on stdout (no summary, no progress bar).
        #[arg(long)]
        json: bool,
        /// Exit with status 1 unless the run converged with no duplicate
        /// and no unexpected delivery.
        #[arg(long)]
        check: bool,
        /// Worker threads (default: one per available core). The metrics
        /// do not depend on it.
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// List the shipped scenarios.
    ListScenarios,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mmls-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::ListScenarios => {
            for (name, text) in BUILTIN {
                let sc = Scenario::from_toml(text, &format!("{name}.toml"))?;
                println!("{name:<18} {}", sc.description);
            }
            println!("\nRun one with: mmls-sim run NAME   (or a path to your own .toml)");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            scenario,
            seed,
            members,
            duration,
            group_cache,
            out,
            json,
            check,
            threads,
        } => {
            let mut sc = Scenario::load(&scenario)?;
            if let Some(n) = members {
                sc.members = n;
            }
            if let Some(d) = duration {
                sc.duration_s = d;
            }
            if let Some(c) = group_cache {
                sc.engine.group_cache = (c > 0).then_some(c);
            }
            if members.is_some() || duration.is_some() {
                sc.validate()
                    .map_err(|e| anyhow::anyhow!("{}: {e}", sc.name))?;
            }
            let dir = out.unwrap_or_else(|| PathBuf::from("mmls-sim-out").join(&sc.name));
            let progress = !json && std::io::stderr().is_terminal();
            let result = run(
                sc,
                &RunOptions {
                    seed,
                    progress,
                    threads,
                },
            )?;
            let files = report::write_outputs(&result, &dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&result.metrics)?);
            } else {
                print!("{}", report::summary(&result, &files));
            }
            let m = &result.metrics;
            if check && !(m.converged && m.duplicates == 0 && m.unexpected_deliveries == 0) {
                eprintln!(
                    "mmls-sim: check failed (converged: {}, duplicates: {}, unexpected: {})",
                    m.converged, m.duplicates, m.unexpected_deliveries
                );
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

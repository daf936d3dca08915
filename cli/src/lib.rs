//! The `mmls` command line: runs an MMLS node in the foreground, talks to a
//! running node through its local API, and runs the self-contained demo.
//!
//! Module map: `args` (the clap definitions), `commands` (everything that
//! talks to a running node through [`node::Client`]), `run` (`mmls run`),
//! `demo` (`mmls demo`: N in-process nodes, partition, heal, PCS round),
//! `output` (tables and time formatting).

pub mod args;
pub mod commands;
pub mod demo;
pub mod devices;
pub mod output;
pub mod run;

use anyhow::Context as _;
use args::{Cli, Command};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// The platform's data dir for mmls (`~/.local/share/mmls` on Linux).
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    directories::ProjectDirs::from("org", "mmls", "mmls")
        .map(|d| d.data_dir().to_path_buf())
        .context("cannot determine a default data dir (no home directory?): pass --data-dir or set MMLS_DATA_DIR")
}

/// Entry point of the binary: parses the arguments, runs the command, and
/// turns an error into one `error: ...` line on stderr and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            // `mmls read | head`: the reader went away; not an error.
            ExitCode::SUCCESS
        }
        Err(e) => {
            // `{:#}` prints the whole context chain on one line.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    // Resolved only by the commands that use a data dir (the demo needs
    // none at all).
    let data_dir = cli.data_dir.clone();
    let dir = move || -> anyhow::Result<PathBuf> {
        match &data_dir {
            Some(d) => Ok(d.clone()),
            None => default_data_dir(),
        }
    };
    match cli.command {
        Command::Demo(a) => return demo::run(&a),
        Command::Init {
            name,
            x509_cert,
            x509_key,
        } => commands::init(&dir()?, &name, x509_cert.zip(x509_key))?,
        Command::Id { json } => commands::id(&dir()?, json)?,
        Command::Run(a) => run::run(&dir()?, a)?,
        Command::Universe(u) => commands::universe(&dir()?, u)?,
        Command::Send {
            universe,
            text,
            json,
        } => commands::send(&dir()?, &universe, &text, json)?,
        Command::Read {
            universe,
            after,
            limit,
            delivered,
            json,
        } => {
            if delivered || after.is_some() {
                commands::read(&dir()?, &universe, after, limit, json)?
            } else {
                commands::conversation(&dir()?, &universe, limit, json)?
            }
        }
        Command::Open { no_browser, json } => commands::open(&dir()?, no_browser, json)?,
        Command::Contact(c) => commands::contact(&dir()?, c)?,
        Command::Device(c) => devices::device(&dir()?, c)?,
        Command::Tail { universe, json } => commands::tail(&dir()?, &universe, json)?,
        Command::Update { universe } => commands::update(&dir()?, &universe)?,
        Command::Identity(c) => commands::identity(&dir()?, c)?,
        Command::Status { json } => commands::status(&dir()?, json)?,
        Command::Peers { json } => commands::peers(&dir()?, json)?,
        Command::Rejoin { universe } => commands::rejoin(&dir()?, &universe)?,
        Command::Bundle(b) => commands::bundle(&dir()?, b)?,
        Command::Wipe { yes } => commands::wipe(&dir()?, yes)?,
    }
    Ok(ExitCode::SUCCESS)
}

//! `mmls run`: the node in the foreground until Ctrl-C (or SIGTERM, or
//! `POST /v1/shutdown`).

use crate::args::RunArgs;
use crate::commands::{open_data_dir, outln, with_p2p};
use anyhow::Context as _;
use node::{Multiaddr, Node, NodeError, NodeHandle};
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

/// Logs to stderr, filtered by RUST_LOG (default `info`). Colours only on
/// a terminal (and not with NO_COLOR): redirected logs stay plain text.
pub fn init_tracing(default: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn run(dir: &Path, args: RunArgs) -> anyhow::Result<()> {
    // A clear "run `mmls init` first" before anything starts.
    open_data_dir(dir)?;
    if let Some(api) = args.api {
        if !api.ip().is_loopback() {
            anyhow::bail!(
                "--api {api}: the local API only listens on a loopback address (127.0.0.1 or ::1); \
                 its token travels in clear HTTP"
            );
        }
    }
    // gossipsub warns at every re-announcement of an unchanged KeyPackage
    // (its duplicate cache refuses the identical bytes, which is expected).
    init_tracing("info,libp2p_gossipsub=error");

    let mut cfg = node::Config::daemon(dir);
    if !args.listen.is_empty() {
        cfg.listen = args.listen;
    }
    cfg.peers = args.peer;
    cfg.mdns = !args.no_mdns;
    cfg.engine.commit_delay_ms = args.commit_delay_ms;
    cfg.engine.import_window_ms = args.import_window_ms;
    cfg.engine.psk_max_age_ms = args.psk_max_age_hours * 3_600_000;
    cfg.engine.ciphersuites = args.suites.0.clone();
    cfg.timing.ping_interval = Duration::from_millis(args.ping_interval_ms);
    cfg.timing.ping_timeout = Duration::from_millis(args.ping_timeout_ms);
    if let Some(api) = args.api {
        cfg.api_addr = Some(api);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let h = Node::start(cfg).await.map_err(start_error)?;
        let member = h.member_id().to_string();
        outln!("mmls node {:?} running on {}", h.name(), dir.display());
        outln!("member id {member}");
        let mut printed = BTreeSet::new();
        print_new_addrs(&h, &member, &mut printed).await?;
        if let Some(a) = h.api_addr() {
            outln!(
                "local API on http://{a} (token in {})",
                dir.join("api.token").display()
            );
        }
        if let Some(url) = h.web_login_url() {
            outln!("web app: {url}  (one-time link; `mmls open` makes another)");
        }
        outln!("press Ctrl-C to stop");

        // Listeners on 0.0.0.0 report one address per interface, some after
        // the first ones: print late arrivals for a few seconds.
        let watcher = {
            let h = h.clone();
            let member = member.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if print_new_addrs(&h, &member, &mut printed).await.is_err() {
                        break;
                    }
                }
            })
        };

        tokio::select! {
            _ = node::shutdown_signal() => {
                outln!("stopping...");
                watcher.abort();
                if tokio::time::timeout(Duration::from_secs(15), h.shutdown()).await.is_err() {
                    anyhow::bail!("the node did not stop within 15 s");
                }
            }
            _ = h.wait() => {
                watcher.abort();
            }
        }
        outln!("stopped");
        Ok(())
    })
}

async fn print_new_addrs(
    h: &NodeHandle,
    member: &str,
    printed: &mut BTreeSet<Multiaddr>,
) -> anyhow::Result<()> {
    for a in h.listen_addrs().await? {
        if printed.insert(a.clone()) {
            outln!("listening on {}", with_p2p(&a.to_string(), member));
        }
    }
    Ok(())
}

fn start_error(e: NodeError) -> anyhow::Error {
    match e {
        NodeError::RemoteApiRefused(a) => {
            anyhow::anyhow!("--api {a}: the local API only listens on a loopback address")
        }
        other => anyhow::anyhow!("cannot start the node: {other}"),
    }
}

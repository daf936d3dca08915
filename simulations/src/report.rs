//! Writing a run's outputs (metrics JSON, CSV time series, SVG plots, the
//! effective scenario) and the one-screen human summary.

use crate::plots;
use crate::sim::SimOutput;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Writes everything into `dir` (created if needed); returns the files.
pub fn write_outputs(out: &SimOutput, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = vec![];
    let mut put = |name: &str, text: String| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        files.push(p);
        Ok(())
    };
    put(
        "metrics.json",
        serde_json::to_string_pretty(&out.metrics)? + "\n",
    )?;
    put(
        "scenario.toml",
        toml::to_string(&out.scenario).unwrap_or_default(),
    )?;

    let mut csv = String::from("t_s,deliveries,deliveries_total,messages_sent,commits\n");
    for (t, d, total, sent, commits) in &out.series.deliveries {
        let _ = writeln!(csv, "{t},{d},{total},{sent},{commits}");
    }
    put("deliveries.csv", csv)?;
    let mut csv = String::from("t_s,owner,owner_epoch,min_member_epoch,max_member_epoch\n");
    for (t, o, e, lo, hi) in &out.series.epochs {
        let _ = writeln!(csv, "{t},{o},{e},{lo},{hi}");
    }
    put("epochs.csv", csv)?;
    let mut csv = String::from("t_s,node,bytes_sent,bytes_received\n");
    for (t, n, s, r) in &out.series.bytes {
        let _ = writeln!(csv, "{t},{n},{s},{r}");
    }
    put("bytes.csv", csv)?;
    let mut csv = String::from("victim,compromise_s,owner,sent_after_s,read\n");
    for panel in &out.pcs_points {
        for pt in &panel.points {
            let _ = writeln!(
                csv,
                "{},{},{},{},{}",
                panel.victim, panel.at_s, pt.owner, pt.sent_s, pt.read
            );
        }
    }
    put("pcs.csv", csv)?;

    let svg = |n: &str| dir.join(n);
    plots::latency_cdf(&svg("latency_cdf.svg"), &out.latencies)?;
    files.push(svg("latency_cdf.svg"));
    plots::epochs(&svg("epochs.svg"), &out.series.epochs)?;
    files.push(svg("epochs.svg"));
    plots::bytes_per_node(&svg("bytes_per_node.svg"), &out.bytes_per_node)?;
    files.push(svg("bytes_per_node.svg"));
    if !out.pcs_points.is_empty() {
        let heal: Vec<Option<f64>> = out.metrics.pcs.iter().map(|p| p.heal_seconds).collect();
        plots::pcs_timeline(&svg("pcs.svg"), &out.pcs_points, &heal)?;
        files.push(svg("pcs.svg"));
    }
    Ok(files)
}

fn mb(b: u64) -> String {
    if b >= 1_000_000_000 {
        format!("{:.2} GB", b as f64 / 1e9)
    } else {
        format!("{:.1} MB", b as f64 / 1e6)
    }
}

/// The one-screen human summary.
pub fn summary(out: &SimOutput, files: &[PathBuf]) -> String {
    let m = &out.metrics;
    let sc = &out.scenario;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "mmls-sim  {} (seed {}): {} members{}, {} ({} links), {} s + {} s quiet",
        m.scenario,
        m.seed,
        m.members,
        if m.nodes > m.members {
            format!(" + {} joiners", m.nodes - m.members)
        } else {
            String::new()
        },
        m.topology,
        m.links,
        sc.duration_s,
        sc.sim.quiet_s
    );
    let pct = if m.deliveries_expected > 0 {
        100.0 * m.deliveries as f64 / m.deliveries_expected as f64
    } else {
        100.0
    };
    let _ = writeln!(
        s,
        "  messages    {} sent; {}/{} expected deliveries ({pct:.2}%); {} duplicates; {} unexpected",
        m.messages_sent, m.deliveries, m.deliveries_expected, m.duplicates, m.unexpected_deliveries
    );
    let _ = writeln!(
        s,
        "  latency     p50 {} ms, p90 {} ms, p99 {} ms, max {} ms (virtual)",
        m.latency_ms.p50, m.latency_ms.p90, m.latency_ms.p99, m.latency_ms.max
    );
    let _ = writeln!(
        s,
        "  converged   {} ({} members checked; {} missing deliveries, {} epoch mismatches)",
        if m.converged { "YES" } else { "NO" },
        m.convergence.members_checked,
        m.convergence.missing_deliveries,
        m.convergence.epoch_mismatches
    );
    for p in m.convergence.problems.iter().take(4) {
        let _ = writeln!(s, "              - {p}");
    }
    let _ = writeln!(
        s,
        "  wire        {} total (gossip {} of which control {}, sync {}) for {} published: {} per byte published; {} frames lost, {} dropped at full queues; {} redundant gossip frames",
        mb(m.bytes_on_wire),
        mb(m.bytes_gossip),
        mb(m.bytes_gossip_control),
        mb(m.bytes_sync),
        mb(m.bytes_published),
        m.wire_per_published
            .map(|r| format!("{r:.1}x"))
            .unwrap_or_else(|| "-".into()),
        m.frames_lost,
        m.queue_drops,
        m.gossip_redundant
    );
    let cpu = m
        .commits_per_update
        .map(|c| format!("{c:.2} per update"))
        .unwrap_or_else(|| "no updates".into());
    let _ = writeln!(
        s,
        "  commits     {} ({} with a path) for {} updates: {cpu}",
        m.commits, m.commits_with_path, m.updates
    );
    let _ = writeln!(
        s,
        "  sync        {} summary exchanges, {} fetch requests, {} envelopes fetched",
        m.sync_exchanges, m.fetch_requests, m.fetched_envelopes
    );
    let errs: Vec<String> = m
        .input_errors
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(
        s,
        "  engine      {} rejected entries, {} PSK errors, {} stale, {} rejoins, {} equivocations; input errors: {}",
        m.rejected_entries,
        m.psk_errors,
        m.stale_events,
        m.rejoins,
        m.equivocations,
        if errs.is_empty() { "none".into() } else { errs.join(", ") }
    );
    if m.sends_refused + m.updates_refused > 0 {
        let _ = writeln!(
            s,
            "  refused     {} sends, {} updates (not in the universe yet)",
            m.sends_refused, m.updates_refused
        );
    }
    for e in m.driver_errors.iter().take(3) {
        let _ = writeln!(s, "  driver      {e}");
    }
    for p in &m.pcs {
        let line = match p.heal_seconds {
            Some(h) => format!(
                "healed after {h:.1} s (median group {:.1} s); attacker read {}/{} later messages",
                p.median_group_heal_seconds.unwrap_or(0.0),
                p.read,
                p.sent_after
            ),
            None => format!(
                "NOT healed ({}/{} groups healed); attacker read {}/{} later messages",
                p.groups.iter().filter(|g| g.healed).count(),
                p.groups.len(),
                p.read,
                p.sent_after
            ),
        };
        let upd = p
            .victim_first_update_s
            .map(|u| format!("; victim's first update {u:.1} s after"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  pcs         member {} at {} s: {line}{upd}",
            p.member, p.at_s
        );
    }
    let _ = writeln!(
        s,
        "  run         {:.1} s wall on {} thread{}, {:.0} MB peak RSS ({:.2} MB per member; store {:.2} MB per member at the end; {} group decodes per member)",
        m.wall_seconds,
        m.cost.threads,
        if m.cost.threads == 1 { "" } else { "s" },
        m.peak_rss_mb,
        m.cost.bytes_per_member as f64 / 1e6,
        m.cost.store_bytes_per_member as f64 / 1e6,
        m.cost.group_decodes_per_member
    );
    let _ = writeln!(
        s,
        "  overhead    {} (wall / openmls price of {} commit handlings and {} decryptions = {:.1} s)",
        m.cost
            .overhead
            .map_or_else(|| "-".to_string(), |o| format!("{o:.2}x")),
        m.cost.commit_handlings,
        m.cost.decryptions,
        m.cost.openmls_seconds
    );
    if let Some(dir) = files.first().and_then(|f| f.parent()) {
        let names: Vec<String> = files
            .iter()
            .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().to_string()))
            .collect();
        let _ = writeln!(
            s,
            "  outputs     {}/ {{{}}}",
            dir.display(),
            names.join(", ")
        );
    }
    s
}

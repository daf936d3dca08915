//! SVG plots (plotters' SVG backend only: text is emitted as SVG `<text>`
//! with a built-in size estimate, so no font library is needed).

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

const SIZE: (u32, u32) = (900, 520);

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// Cumulative distribution of delivery latencies (sorted, virtual ms).
pub fn latency_cdf(path: &Path, sorted: &[u32]) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max = sorted.last().copied().unwrap_or(1).max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Delivery latency CDF (send -> delivery, virtual time)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..max * 1.02, 0f64..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms)")
        .y_desc("fraction of deliveries")
        .draw()
        .map_err(err)?;
    let n = sorted.len();
    let step = (n / 2000).max(1);
    let mut pts: Vec<(f64, f64)> = sorted
        .iter()
        .enumerate()
        .step_by(step)
        .map(|(i, v)| (*v as f64, (i + 1) as f64 / n as f64))
        .collect();
    if let Some(last) = sorted.last() {
        pts.push((*last as f64, 1.0));
    }
    chart
        .draw_series(LineSeries::new(pts, BLUE.stroke_width(2)))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Each owner's epoch of its own send group over time.
/// `rows`: (t_s, owner, owner epoch, min member epoch, max member epoch).
pub fn epochs(path: &Path, rows: &[(f64, usize, u64, u64, u64)]) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let tmax = rows.iter().map(|r| r.0).fold(1.0, f64::max);
    let emax = rows.iter().map(|r| r.2.max(r.4)).max().unwrap_or(1).max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Send-group epochs over time (owner's view; dotted: slowest member)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..tmax, 0f64..emax * 1.05)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("virtual time (s)")
        .y_desc("epoch")
        .draw()
        .map_err(err)?;
    let mut owners: Vec<usize> = rows.iter().map(|r| r.1).collect();
    owners.sort_unstable();
    owners.dedup();
    for (k, o) in owners.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let own: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.1 == *o)
            .map(|r| (r.0, r.2 as f64))
            .collect();
        chart
            .draw_series(LineSeries::new(own, color.stroke_width(1)))
            .map_err(err)?;
        let lo: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.1 == *o)
            .map(|r| (r.0, r.3 as f64))
            .collect();
        chart
            .draw_series(lo.iter().map(|p| Circle::new(*p, 1, color.filled())))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Total bytes each node put on the wire.
pub fn bytes_per_node(path: &Path, bytes: &[u64]) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = bytes.len().max(1);
    let max_mb = bytes.iter().copied().max().unwrap_or(1).max(1) as f64 / 1e6;
    let mut chart = ChartBuilder::on(&root)
        .caption("Bytes sent per node (gossip + sync)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..max_mb * 1.05)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("node")
        .y_desc("MB sent")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .style(BLUE.mix(0.6).filled())
                .margin(1)
                .data(bytes.iter().enumerate().map(|(i, b)| (i, *b as f64 / 1e6))),
        )
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One panel per compromise: every message sent after it in another
/// member's group, by owner (y) and send time after the compromise (x);
/// red = the attacker read it, green = it could not.
pub fn pcs_timeline(
    path: &Path,
    compromises: &[crate::sim::PcsPanel],
    heal: &[Option<f64>],
) -> Result<()> {
    let k = compromises.len().max(1);
    let root = SVGBackend::new(path, (SIZE.0, 120 + 360 * k as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((k, 1));
    for (i, panel) in compromises.iter().enumerate() {
        let (victim, at, pts) = (panel.victim, panel.at_s, &panel.points);
        let tmax = pts.iter().map(|p| p.sent_s).fold(1.0, f64::max);
        let omax = pts.iter().map(|p| p.owner).max().unwrap_or(1).max(1) as f64;
        let title = match heal.get(i).copied().flatten() {
            Some(h) => format!("Compromise of member {victim} at {at:.0} s: healed after {h:.1} s"),
            None => format!("Compromise of member {victim} at {at:.0} s: not healed in the run"),
        };
        let mut chart = ChartBuilder::on(&panels[i])
            .caption(title, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..tmax * 1.02, -0.5f64..omax + 0.5)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds after the compromise (message send time)")
            .y_desc("owner of the send group")
            .draw()
            .map_err(err)?;
        chart
            .draw_series(pts.iter().map(|p| {
                let c = if p.read {
                    RED.filled()
                } else {
                    GREEN.mix(0.7).filled()
                };
                Circle::new((p.sent_s, p.owner as f64), 3, c)
            }))
            .map_err(err)?;
        if let Some(h) = heal.get(i).copied().flatten() {
            chart
                .draw_series(LineSeries::new(
                    vec![(h, -0.5), (h, omax + 0.5)],
                    BLACK.stroke_width(1),
                ))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

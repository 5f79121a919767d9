//! The suite's charts, as PNG files next to its table: the propagation CDF of the gossip
//! benchmark and the sync throughput over time. Drawn with plotters into a bitmap; the
//! text uses DejaVu Sans from the system (Debian's `fonts-dejavu-core`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use plotters::prelude::*;

use crate::SyncResult;
use crate::gossip::{GossipResult, Mode};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Registers the font once; plotters needs it for every label.
fn font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let path = FONT_PATHS
            .iter()
            .find(|p| Path::new(p).exists())
            .ok_or("no DejaVu Sans font (apt-get install fonts-dejavu-core)")?;
        let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        // plotters keeps the font for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path}: not a font plotters can read"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Both charts into `dir`; returns their paths.
pub fn draw(
    dir: &Path,
    gossip: &[GossipResult],
    sync: &[SyncResult],
) -> anyhow::Result<Vec<PathBuf>> {
    font()?;
    let cdf = dir.join("propagation-cdf.png");
    propagation_cdf(&cdf, gossip).context("propagation chart")?;
    let throughput = dir.join("sync-throughput.png");
    sync_throughput(&throughput, sync).context("sync chart")?;
    Ok(vec![cdf, throughput])
}

/// (x, fraction of samples ≤ x) for sorted samples.
fn cdf_points(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, &x)| (x, (i + 1) as f64 / n))
        .collect()
}

fn propagation_cdf(path: &Path, gossip: &[GossipResult]) -> anyhow::Result<()> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for g in gossip {
        if (g.mode.both() || g.mode == Mode::DirectPush) && !g.tx_all_ms.is_empty() {
            series.push((
                format!("tx, {} nodes, {}", g.nodes, g.mode.name()),
                cdf_points(&g.tx_all_ms),
            ));
        }
        if g.mode.both() && !g.block_all_ms.is_empty() {
            series.push((
                format!("block, {} nodes, {}", g.nodes, g.mode.name()),
                cdf_points(&g.block_all_ms),
            ));
        }
    }
    if series.is_empty() {
        bail!("no propagation samples");
    }
    let max_x = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.05;
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Time for a transaction or block to reach every node",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_x, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds from submission (tx) or production (block) to the last node")
        .y_desc("fraction")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Blocks per second in each window of `window` seconds, at the window's end.
fn rate(progress: &[(f64, u64)], window: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(t, h) in progress {
        while j < progress.len() && progress[j].0 < t - window {
            j += 1;
        }
        let (t0, h0) = progress[j];
        if t > t0 {
            out.push((t, (h - h0) as f64 / (t - t0)));
        }
    }
    out
}

fn sync_throughput(path: &Path, sync: &[SyncResult]) -> anyhow::Result<()> {
    if sync.is_empty() {
        bail!("no sync runs");
    }
    let root = BitMapBackend::new(path, (960, 300 * sync.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    for (i, (area, s)) in root
        .split_evenly((sync.len(), 1))
        .iter()
        .zip(sync)
        .enumerate()
    {
        let pts = rate(&s.progress, 1.0);
        let max_x = s.progress.last().map_or(1.0, |p| p.0).max(0.1);
        let max_y = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "Sync of {} × {} from {} peer(s): {:.0} blocks/s on average, {:.2} of the limit",
                    s.blocks, s.workload, s.peers, s.blocks_per_s, s.ratio
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the syncing node started")
            .y_desc("blocks/s (1 s window)")
            .label_style(("sans-serif", 13))
            .draw()?;
        chart.draw_series(LineSeries::new(
            pts,
            COLORS[i % COLORS.len()].stroke_width(2),
        ))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_and_windowed_rate() {
        assert_eq!(
            cdf_points(&[1.0, 2.0, 4.0, 8.0]),
            vec![(1.0, 0.25), (2.0, 0.5), (4.0, 0.75), (8.0, 1.0)]
        );
        // 100 blocks per second, sampled every half second.
        let p: Vec<(f64, u64)> = (0..=10).map(|i| (i as f64 * 0.5, i * 50)).collect();
        let r = rate(&p, 1.0);
        assert!(r.iter().all(|x| (x.1 - 100.0).abs() < 1e-9), "{r:?}");
    }
}

//! Plots of a run, as SVG: CDFs of TTFVT and E2E, the in-flight / TPS / KV
//! timeline, accuracy per difficulty. `report.html` embeds them.

use crate::client::RequestResult;
use crate::report::RunSummary;
use plotters::prelude::*;

const W: u32 = 720;
const H: u32 = 360;

fn cdf(mut v: Vec<f64>) -> Vec<(f64, f64)> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    v.iter()
        .enumerate()
        .map(|(i, x)| (*x, (i + 1) as f64 / n))
        .collect()
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plot: {e}")
}

/// CDFs of TTFT, TTFVT and E2E.
pub fn latency_cdf(results: &[RequestResult]) -> anyhow::Result<String> {
    let ok: Vec<&RequestResult> = results.iter().filter(|r| r.ok()).collect();
    let series = [
        (
            "TTFT",
            cdf(ok.iter().filter_map(|r| r.ttft_s).collect()),
            BLUE,
        ),
        (
            "TTFVT",
            cdf(ok.iter().filter_map(|r| r.ttfvt_s).collect()),
            RED,
        ),
        ("E2E", cdf(ok.iter().map(|r| r.e2e_s).collect()), BLACK),
    ];
    let xmax = series
        .iter()
        .flat_map(|s| s.1.last().map(|p| p.0))
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Latency CDF (seconds)", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..xmax * 1.02, 0.0..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the request was sent")
            .y_desc("fraction of requests")
            .draw()
            .map_err(err)?;
        for (name, pts, color) in series {
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// In-flight requests, output tokens/s and (when scraped) engine KV use over
/// the run.
pub fn timeline(s: &RunSummary, kv: &[(f64, f64)]) -> anyhow::Result<String> {
    let t_max = s.timeline.last().map(|p| p.t_s).unwrap_or(1.0).max(1.0);
    let in_max = s
        .timeline
        .iter()
        .map(|p| p.in_flight)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let tps_max = s
        .timeline
        .iter()
        .map(|p| p.output_tokens_per_s)
        .fold(1.0, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H * 3 / 2)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let panels = root.split_evenly((if kv.is_empty() { 2 } else { 3 }, 1));
        let draw = |area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
                    title: &str,
                    ymax: f64,
                    pts: Vec<(f64, f64)>,
                    color: RGBColor|
         -> anyhow::Result<()> {
            let mut c = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 15))
                .margin(8)
                .x_label_area_size(25)
                .y_label_area_size(55)
                .build_cartesian_2d(0.0..t_max, 0.0..ymax * 1.05)
                .map_err(err)?;
            c.configure_mesh().draw().map_err(err)?;
            c.draw_series(AreaSeries::new(pts, 0.0, color.mix(0.3)).border_style(color))
                .map_err(err)?;
            Ok(())
        };
        draw(
            &panels[0],
            "requests in flight",
            in_max,
            s.timeline
                .iter()
                .map(|p| (p.t_s, p.in_flight as f64))
                .collect(),
            BLUE,
        )?;
        draw(
            &panels[1],
            "output tokens/s",
            tps_max,
            s.timeline
                .iter()
                .map(|p| (p.t_s, p.output_tokens_per_s))
                .collect(),
            GREEN,
        )?;
        if let Some(area) = panels.get(2) {
            draw(
                area,
                "engine KV-cache use (0..1, scraped)",
                1.0,
                kv.to_vec(),
                RED,
            )?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Accuracy per difficulty, as bars.
pub fn accuracy(s: &RunSummary) -> anyhow::Result<String> {
    let rows: Vec<(&String, f64)> = s
        .accuracy_by_difficulty
        .iter()
        .map(|(k, a)| (k, a.rate))
        .collect();
    let n = rows.len().max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut c = ChartBuilder::on(&root)
            .caption("Accuracy per difficulty", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..n as f64, 0.0..1.0)
            .map_err(err)?;
        let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| names.get(x.floor() as usize).cloned().unwrap_or_default())
            .y_desc("fraction correct")
            .draw()
            .map_err(err)?;
        c.draw_series(rows.iter().enumerate().map(|(i, (_, v))| {
            Rectangle::new(
                [(i as f64 + 0.2, 0.0), (i as f64 + 0.8, *v)],
                BLUE.mix(0.6).filled(),
            )
        }))
        .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One self-contained HTML page: the table and every plot inline.
pub fn html(s: &RunSummary, table: &str, plots: &[(&str, String)]) -> String {
    let mut o = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>thinkgate ASU report</title>\
         <style>body{font-family:sans-serif;max-width:780px;margin:2em auto;color:#222}\
         pre{background:#f6f6f6;padding:1em;overflow-x:auto}figure{margin:1.5em 0}</style></head><body>",
    );
    o.push_str(&format!(
        "<h1>{}</h1>",
        esc(if s.label.is_empty() {
            "ASU report"
        } else {
            &s.label
        })
    ));
    o.push_str("<p>A = accuracy, S = service (tokens/s), U = user (TTFT: first token of any kind; TTFVT: first visible token; E2E). Definitions: thinkgate README.</p>");
    o.push_str(&format!("<pre>{}</pre>", esc(table)));
    for (title, svg) in plots {
        o.push_str(&format!(
            "<figure><figcaption>{}</figcaption>{svg}</figure>",
            esc(title)
        ));
    }
    o.push_str(&format!(
        "<details><summary>run</summary><pre>{}</pre></details>",
        esc(&serde_json::to_string_pretty(&s.run).unwrap_or_default())
    ));
    o.push_str("</body></html>\n");
    o
}

fn p99(s: &RunSummary, key: &str) -> f64 {
    s.latency_s.get(key).map_or(f64::NAN, |d| d.p99)
}

/// A sweep (`--sweep`): p99 E2E and TTFVT, output tokens/s and accuracy per
/// value, one panel each, values in the order run.
pub fn sweep(param: &str, rows: &[(String, RunSummary)]) -> anyhow::Result<String> {
    type Metric = fn(&RunSummary) -> f64;
    type Panel<'a> = (&'a str, &'a str, Vec<(&'a str, Metric, RGBColor)>);
    let panels: [Panel<'_>; 3] = [
        (
            "p99 latency (s)",
            "seconds",
            vec![
                ("E2E p99", |s| p99(s, "e2e"), BLACK),
                ("TTFVT p99", |s| p99(s, "ttfvt"), RED),
            ],
        ),
        (
            "output tokens/s",
            "tokens/s",
            vec![("TPS", |s| s.throughput.output_tokens_per_s, BLUE)],
        ),
        (
            "accuracy (%)",
            "% correct",
            vec![("accuracy", |s| s.accuracy.rate * 100.0, GREEN)],
        ),
    ];
    let n = rows.len().max(1);
    let labels: Vec<String> = rows.iter().map(|(v, _)| v.clone()).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H * 3)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        for (area, (title, unit, series)) in root.split_evenly((3, 1)).iter().zip(panels) {
            let ymax = series
                .iter()
                .flat_map(|(_, f, _)| rows.iter().map(|(_, s)| f(s)))
                .filter(|v| v.is_finite())
                .fold(0.0f64, f64::max)
                .max(1e-9)
                * 1.15;
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{title} by {param}"), ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(55)
                .build_cartesian_2d(0usize..(n - 1).max(1), 0.0..ymax)
                .map_err(err)?;
            let lab = labels.clone();
            chart
                .configure_mesh()
                .x_labels(n)
                .x_label_formatter(&move |i| lab.get(*i).cloned().unwrap_or_default())
                .y_desc(unit)
                .draw()
                .map_err(err)?;
            for (name, f, color) in series {
                let pts: Vec<(usize, f64)> = rows
                    .iter()
                    .enumerate()
                    .map(|(i, (_, s))| (i, f(s)))
                    .filter(|p| p.1.is_finite())
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(err)?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                    .map_err(err)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

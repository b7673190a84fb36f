//! Plots of a run, as SVG: CDFs of TTFVT and E2E, the in-flight / TPS / KV
//! timeline, the straggler tail, thinking length against difficulty (or the
//! gateway's prediction), accuracy per difficulty and per domain.
//! `report.html` embeds them; `load compare --html` puts two runs' side by
//! side.

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

/// Bars with one label under each (a segmented axis, so every bar gets
/// its name at its centre).
fn bars(title: &str, y_desc: &str, y_max: f64, rows: &[(String, f64)]) -> anyhow::Result<String> {
    let n = rows.len().max(1) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d((0..n).into_segmented(), 0.0..y_max)
            .map_err(err)?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(n as usize + 1)
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => rows
                    .get(*i as usize)
                    .map(|r| r.0.clone())
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .y_desc(y_desc)
            .draw()
            .map_err(err)?;
        c.draw_series(rows.iter().enumerate().map(|(i, (_, v))| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i as u32), 0.0),
                    (SegmentValue::Exact(i as u32 + 1), *v),
                ],
                BLUE.mix(0.6).filled(),
            );
            bar.set_margin(0, 0, 12, 12);
            bar
        }))
        .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Accuracy per group (difficulty label, or domain), each bar labelled
/// with how many requests were graded.
pub fn accuracy_by(
    title: &str,
    groups: &std::collections::BTreeMap<String, crate::report::Accuracy>,
) -> anyhow::Result<String> {
    let rows: Vec<(String, f64)> = groups
        .iter()
        .map(|(k, a)| (format!("{k} ({})", a.graded), a.rate))
        .collect();
    bars(title, "fraction correct", 1.0, &rows)
}

/// Median thinking tokens per group (difficulty label, or application
/// for mixed traffic): runtime follows difficulty.
pub fn thinking_by(results: &[RequestResult]) -> anyhow::Result<String> {
    let mut groups: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for r in results.iter().filter(|r| r.ok()) {
        let key = r
            .app
            .clone()
            .or_else(|| r.difficulty.clone())
            .unwrap_or_else(|| "all".into());
        groups
            .entry(key)
            .or_default()
            .push(r.thinking_tokens as f64);
    }
    let rows: Vec<(String, f64)> = groups
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(f64::total_cmp);
            (format!("{k} ({})", v.len()), v[v.len() / 2])
        })
        .collect();
    let top = rows.iter().map(|r| r.1).fold(1.0, f64::max) * 1.1;
    bars(
        "Median thinking tokens by difficulty label (or application)",
        "thinking tokens",
        top,
        &rows,
    )
}

/// The straggler tail: the share of requests whose E2E exceeds x, on a
/// log scale down to the slowest request (a few hard requests set it).
pub fn straggler_tail(results: &[RequestResult]) -> anyhow::Result<String> {
    let mut e2e: Vec<f64> = results
        .iter()
        .filter(|r| r.ok() && r.e2e_s.is_finite())
        .map(|r| r.e2e_s)
        .collect();
    e2e.sort_by(f64::total_cmp);
    let n = e2e.len() as f64;
    let pts: Vec<(f64, f64)> = e2e
        .iter()
        .enumerate()
        .map(|(i, x)| (*x, (n - i as f64) / n))
        .collect();
    let xmax = e2e.last().copied().unwrap_or(1.0).max(1e-3);
    let ymin = (1.0 / n.max(1.0)).min(0.1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut c = ChartBuilder::on(&root)
            .caption(
                "Straggler tail: share of requests slower than x",
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..xmax * 1.02, (ymin..1.0).log_scale())
            .map_err(err)?;
        c.configure_mesh()
            .x_desc("E2E seconds")
            .y_desc("fraction slower (log)")
            .draw()
            .map_err(err)?;
        c.draw_series(LineSeries::new(pts, BLACK.stroke_width(2)))
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Thinking tokens against the gateway's prediction made before the
/// request ran (`x-thinkgate-predicted-thinking`), log-log, one dot per
/// request: how well label-free traffic's length was foreseen.
pub fn predicted_thinking(results: &[RequestResult]) -> anyhow::Result<String> {
    let pts: Vec<(f64, f64)> = results
        .iter()
        .filter(|r| r.ok())
        .filter_map(|r| Some((r.predicted_thinking? + 1.0, r.thinking_tokens as f64 + 1.0)))
        .filter(|(p, _)| p.is_finite())
        .collect();
    let top = pts.iter().map(|(p, a)| p.max(*a)).fold(10.0, f64::max) * 1.2;
    let rho = thinkgate_asu::rank::spearman(&pts);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let title = match rho {
            Some(r) => format!("Thinking tokens against the prediction (Spearman {r:.2})"),
            None => "Thinking tokens against the prediction".into(),
        };
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d((1.0..top).log_scale(), (1.0..top).log_scale())
            .map_err(err)?;
        c.configure_mesh()
            .x_desc("predicted thinking tokens + 1")
            .y_desc("thinking tokens + 1")
            .draw()
            .map_err(err)?;
        c.draw_series(LineSeries::new(
            [(1.0, 1.0), (top, top)],
            RGBColor(150, 150, 150).stroke_width(1),
        ))
        .map_err(err)?;
        c.draw_series(
            pts.iter()
                .map(|p| Circle::new(*p, 2, BLUE.mix(0.4).filled())),
        )
        .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Thinking length against difficulty: the prediction when the gateway
/// sent one, else the median per difficulty label (or application).
pub fn thinking(results: &[RequestResult]) -> anyhow::Result<(&'static str, String)> {
    if results.iter().any(|r| r.predicted_thinking.is_some()) {
        Ok((
            "Thinking tokens against the gateway's prediction",
            predicted_thinking(results)?,
        ))
    } else {
        Ok((
            "Thinking length by difficulty label or application",
            thinking_by(results)?,
        ))
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One chart of the report.
pub struct Chart {
    pub title: &'static str,
    pub file: &'static str,
    pub svg: String,
}

/// The report's charts for one run: the study's four behaviours on the
/// user's own traffic (KV use over time, the straggler tail, thinking
/// length against difficulty, accuracy by difficulty and domain) and the
/// latency CDFs.
pub fn charts(s: &RunSummary, results: &[RequestResult]) -> anyhow::Result<Vec<Chart>> {
    let (thinking_title, thinking_svg) = thinking(results)?;
    Ok(vec![
        Chart {
            title: "Latency CDFs: TTFT, TTFVT, E2E",
            file: "latency_cdf.svg",
            svg: latency_cdf(results)?,
        },
        Chart {
            title: "In flight, output tokens/s and engine KV use over the run",
            file: "timeline.svg",
            svg: timeline(s, &s.engine_kv)?,
        },
        Chart {
            title: "The straggler tail",
            file: "tail.svg",
            svg: straggler_tail(results)?,
        },
        Chart {
            title: thinking_title,
            file: "thinking.svg",
            svg: thinking_svg,
        },
        Chart {
            title: "Accuracy per difficulty",
            file: "accuracy.svg",
            svg: accuracy_by("Accuracy per difficulty", &s.accuracy_by_difficulty)?,
        },
        Chart {
            title: "Accuracy per domain",
            file: "accuracy_by_domain.svg",
            svg: accuracy_by("Accuracy per domain", &s.accuracy_by_domain)?,
        },
    ])
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em auto;color:#222}\
     pre{background:#f6f6f6;padding:1em;overflow-x:auto}figure{margin:1.5em 0}\
     svg{max-width:100%;height:auto}";

fn head(title: &str, max_width: u32) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>{STYLE}body{{max-width:{max_width}px}}</style></head><body><h1>{}</h1>\
         <p>A = accuracy, S = service (tokens/s), U = user (TTFT: first token of any kind; \
         TTFVT: first visible token; E2E). Definitions: thinkgate README.</p>",
        esc(title),
        esc(title)
    )
}

fn label(s: &RunSummary) -> &str {
    if s.label.is_empty() {
        "ASU report"
    } else {
        &s.label
    }
}

/// The self-contained report of one run.
pub fn html(s: &RunSummary, table: &str, charts: &[Chart]) -> String {
    let mut o = head(label(s), 780);
    o.push_str(&format!("<pre>{}</pre>", esc(table)));
    for c in charts {
        o.push_str(&format!(
            "<figure><figcaption>{}</figcaption>{}</figure>",
            esc(c.title),
            c.svg
        ));
    }
    o.push_str(&format!(
        "<details><summary>run</summary><pre>{}</pre></details>",
        esc(&serde_json::to_string_pretty(&s.run).unwrap_or_default())
    ));
    o.push_str("</body></html>\n");
    o
}

/// One side of a comparison: its name, summary table and charts.
pub struct Side<'a> {
    pub name: &'a str,
    pub table: String,
    pub charts: Vec<Chart>,
}

/// Two runs (or two arms) side by side: the comparison with intervals
/// first, then each chart of A next to the same chart of B.
pub fn html_compare(title: &str, comparison: &str, a: &Side<'_>, b: &Side<'_>) -> String {
    let mut o = head(title, 1500);
    o.push_str(&format!("<pre>{}</pre>", esc(comparison)));
    o.push_str("<table style=\"width:100%;table-layout:fixed\"><tr>");
    for side in [a, b] {
        o.push_str(&format!("<th>{}</th>", esc(side.name)));
    }
    o.push_str("</tr><tr>");
    for side in [a, b] {
        o.push_str(&format!(
            "<td style=\"vertical-align:top\"><pre>{}</pre></td>",
            esc(&side.table)
        ));
    }
    o.push_str("</tr>");
    for (ca, cb) in a.charts.iter().zip(&b.charts) {
        o.push_str("<tr>");
        for c in [ca, cb] {
            o.push_str(&format!(
                "<td style=\"vertical-align:top\"><figure><figcaption>{}</figcaption>{}</figure></td>",
                esc(c.title),
                c.svg
            ));
        }
        o.push_str("</tr>");
    }
    o.push_str("</table></body></html>\n");
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

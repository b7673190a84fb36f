//! Arrival times from a trace file: CSV with a `Timestamp` column (the
//! BurstGPT layout: `Timestamp,Model,Request tokens,Response tokens,Total
//! tokens,Log Type`, seconds) or JSONL with a `timestamp` field (seconds).
//! Offsets are taken from the first timestamp and divided by `speed`.

use std::path::Path;
use std::time::Duration;

pub fn load(path: &Path, speed: f64) -> anyhow::Result<Vec<Duration>> {
    anyhow::ensure!(
        speed > 0.0 && speed.is_finite(),
        "--trace-speed must be > 0"
    );
    let is_jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json");
    let mut ts: Vec<f64> = if is_jsonl {
        let text = std::fs::read_to_string(path)?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?;
                v.get("timestamp")
                    .or_else(|| v.get("Timestamp"))
                    .and_then(serde_json::Value::as_f64)
                    .ok_or_else(|| {
                        anyhow::anyhow!("{}:{}: no numeric timestamp", path.display(), i + 1)
                    })
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        let mut rdr = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_path(path)?;
        let col = rdr
            .headers()?
            .iter()
            .position(|h| h.eq_ignore_ascii_case("timestamp"))
            .ok_or_else(|| anyhow::anyhow!("{}: no Timestamp column", path.display()))?;
        rdr.records()
            .enumerate()
            .map(|(i, r)| {
                let r = r?;
                r.get(col)
                    .and_then(|v| v.parse::<f64>().ok())
                    .ok_or_else(|| {
                        anyhow::anyhow!("{}: row {}: bad timestamp", path.display(), i + 2)
                    })
            })
            .collect::<anyhow::Result<_>>()?
    };
    anyhow::ensure!(!ts.is_empty(), "{} has no rows", path.display());
    anyhow::ensure!(
        ts.iter().all(|t| t.is_finite()),
        "{}: timestamps must be finite",
        path.display()
    );
    ts.sort_by(f64::total_cmp);
    let t0 = ts[0];
    Ok(ts
        .into_iter()
        .map(|t| Duration::from_secs_f64((t - t0) / speed))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burstgpt_csv_and_jsonl_load() {
        let dir = std::env::temp_dir().join(format!("tg-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or(());
        let csv = dir.join("burst.csv");
        std::fs::write(
            &csv,
            "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n5,ChatGPT,472,18,490,Conversation log\n7.5,GPT-4,1087,231,1318,Conversation log\n6,ChatGPT,300,20,320,API log\n",
        )
        .unwrap_or(());
        let t = load(&csv, 1.0).unwrap_or_default();
        assert_eq!(
            t,
            vec![
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_millis(2500)
            ]
        );
        assert_eq!(
            load(&csv, 2.0).unwrap_or_default()[2],
            Duration::from_millis(1250)
        );
        let j = dir.join("t.jsonl");
        std::fs::write(&j, "{\"timestamp\": 10.0}\n{\"timestamp\": 10.25}\n").unwrap_or(());
        assert_eq!(
            load(&j, 1.0).unwrap_or_default()[1],
            Duration::from_millis(250)
        );
        std::fs::write(&j, "{\"t\": 1}\n").unwrap_or(());
        assert!(load(&j, 1.0).is_err());
    }
}

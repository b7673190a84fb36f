//! `[tracing]`: where spans go and which requests are sampled. Every key
//! falls back to the standard `OTEL_*` variable, so a gateway dropped into a
//! cluster that already sets them for its other services needs no config.

use serde::{Deserialize, Serialize};

/// `[tracing]`. Off unless an endpoint is configured here or in
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`
/// (and `OTEL_SDK_DISABLED` / `OTEL_TRACES_EXPORTER=none` are not set).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// `false` turns tracing off whatever the environment says.
    pub enabled: Option<bool>,
    /// The collector: a base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` (over
    /// HTTP, `/v1/traces` is added unless the path already ends with it).
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`; default `http/protobuf`).
    pub protocol: Option<String>,
    /// Share of new traces sampled, 0..=1 (`OTEL_TRACES_SAMPLER` and
    /// `OTEL_TRACES_SAMPLER_ARG`; default: follow the client's sampled flag,
    /// else sample all). A failed request is exported whatever the sampler
    /// said.
    pub sample_ratio: Option<f64>,
    /// `service.name` (`OTEL_SERVICE_NAME`; default `thinkgate`).
    pub service_name: Option<String>,
    /// Requests' spans queued for export at most; more are dropped and
    /// counted (`OTEL_BSP_MAX_QUEUE_SIZE`; default 2048).
    pub queue: Option<usize>,
    /// Export at least this often (`OTEL_BSP_SCHEDULE_DELAY`; default 5000).
    pub export_interval_ms: Option<u64>,
    /// Spans per export at most (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`; 512).
    pub max_batch: Option<usize>,
}

/// The protocol spans are exported with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Which new requests are sampled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// A share of trace ids (as the SDK's `TraceIdRatioBased`).
    Ratio(f64),
    /// The client's sampled flag when it sent a `traceparent`, else `root`.
    ParentBased { root: f64 },
}

/// `[tracing]` with the environment applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub endpoint: Option<String>,
    pub protocol: Protocol,
    pub sampler: Sampler,
    pub service_name: String,
    pub queue: usize,
    pub export_interval_ms: u64,
    pub max_batch: usize,
}

impl TracingConfig {
    /// The settings in force, `None` when tracing is off; `env` reads one
    /// variable (the process environment, or a map in tests).
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Resolved>, String> {
        let var = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let off = self.enabled == Some(false)
            || var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let from_env = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .is_some();
        if off || (self.endpoint.is_none() && !from_env && self.enabled != Some(true)) {
            return Ok(None);
        }
        let protocol = match self
            .protocol
            .clone()
            .or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .as_deref()
            .map(str::trim)
        {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(p) => {
                return Err(format!(
                    "tracing protocol {p:?}: thinkgate exports `grpc` or `http/protobuf`"
                ))
            }
        };
        let sampler = match self.sample_ratio {
            Some(r) if (0.0..=1.0).contains(&r) => Sampler::ParentBased { root: r },
            Some(r) => return Err(format!("tracing.sample_ratio {r} is not within 0..=1")),
            None => sampler_from_env(var("OTEL_TRACES_SAMPLER"), var("OTEL_TRACES_SAMPLER_ARG"))?,
        };
        let num = |k: &str| -> Result<Option<u64>, String> {
            var(k)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| format!("{k}={v:?} is not a number"))
                })
                .transpose()
        };
        let queue = match self.queue {
            Some(q) => q,
            None => num("OTEL_BSP_MAX_QUEUE_SIZE")?.unwrap_or(2048) as usize,
        };
        let max_batch = match self.max_batch {
            Some(b) => b,
            None => num("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?.unwrap_or(512) as usize,
        };
        let export_interval_ms = match self.export_interval_ms {
            Some(ms) => ms,
            None => num("OTEL_BSP_SCHEDULE_DELAY")?.unwrap_or(5_000),
        };
        if queue == 0 || max_batch == 0 || export_interval_ms == 0 {
            return Err("tracing queue, max_batch and export_interval_ms must be above 0".into());
        }
        Ok(Some(Resolved {
            endpoint: self.endpoint.clone(),
            protocol,
            sampler,
            service_name: self
                .service_name
                .clone()
                .or_else(|| var("OTEL_SERVICE_NAME"))
                .unwrap_or_else(|| "thinkgate".into()),
            queue,
            export_interval_ms,
            max_batch,
        }))
    }
}

/// `OTEL_TRACES_SAMPLER` as the specification names its values.
fn sampler_from_env(name: Option<String>, arg: Option<String>) -> Result<Sampler, String> {
    let ratio = || -> Result<f64, String> {
        match &arg {
            None => Ok(1.0),
            Some(a) => a
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| format!("OTEL_TRACES_SAMPLER_ARG={a:?} is not a ratio in 0..=1")),
        }
    };
    Ok(match name.as_deref().map(str::trim) {
        None | Some("parentbased_always_on") => Sampler::ParentBased { root: 1.0 },
        Some("parentbased_always_off") => Sampler::ParentBased { root: 0.0 },
        Some("parentbased_traceidratio") => Sampler::ParentBased { root: ratio()? },
        Some("always_on") => Sampler::Ratio(1.0),
        Some("always_off") => Sampler::Ratio(0.0),
        Some("traceidratio") => Sampler::Ratio(ratio()?),
        Some(s) => return Err(format!("OTEL_TRACES_SAMPLER={s:?} is not supported")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn off_without_an_endpoint_and_on_with_the_standard_variables() {
        let c = TracingConfig::default();
        assert_eq!(c.resolve(env(&[])).unwrap(), None);
        let r = c
            .resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
                ("OTEL_SERVICE_NAME", "gw"),
                ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(r.protocol, Protocol::Grpc);
        assert_eq!(r.sampler, Sampler::ParentBased { root: 0.25 });
        assert_eq!(r.service_name, "gw");
        assert_eq!(r.export_interval_ms, 200);
        let disabled = TracingConfig {
            enabled: Some(false),
            ..Default::default()
        };
        assert_eq!(
            disabled
                .resolve(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]))
                .unwrap(),
            None
        );
        assert_eq!(
            c.resolve(env(&[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://c:4318/v1/traces"
                ),
                ("OTEL_SDK_DISABLED", "true"),
            ]))
            .unwrap(),
            None
        );
    }

    #[test]
    fn config_keys_win_and_bad_values_are_refused() {
        let c = TracingConfig {
            endpoint: Some("http://c:4318".into()),
            sample_ratio: Some(0.5),
            ..Default::default()
        };
        let r = c
            .resolve(env(&[("OTEL_TRACES_SAMPLER", "always_off")]))
            .unwrap()
            .unwrap();
        assert_eq!(r.sampler, Sampler::ParentBased { root: 0.5 });
        assert_eq!(r.protocol, Protocol::HttpProtobuf);
        let bad = TracingConfig {
            protocol: Some("http/json".into()),
            ..c.clone()
        };
        assert!(bad.resolve(env(&[])).unwrap_err().contains("http/json"));
        let bad = TracingConfig {
            sample_ratio: Some(2.0),
            ..c.clone()
        };
        assert!(bad.resolve(env(&[])).is_err());
        assert!(TracingConfig::default()
            .resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ]))
            .is_err());
    }
}

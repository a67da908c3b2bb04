//! "Where berthd's time goes" (issue 13): berthd's own per-step timings,
//! `berth_step_duration_seconds{step}` and the per-method
//! `berth_cri_request_duration_seconds` of its /metrics endpoint, scraped
//! before and after a phase: the mean of each step over the phase, under
//! the call it belongs to, and what the call's steps leave unaccounted.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, bail};

/// One step over a phase.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StepRow {
    pub step: String,
    /// Times it ran per lifecycle of the phase.
    pub per_lifecycle: f64,
    /// Mean milliseconds per run.
    pub mean_ms: f64,
}

/// A CRI call over a phase, with its steps.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CallRow {
    pub method: String,
    pub mean_ms: f64,
    pub steps: Vec<StepRow>,
}

/// The sums and counts berthd's endpoint reports, by series label.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    steps: BTreeMap<String, (f64, f64)>,
    calls: BTreeMap<String, (f64, f64)>,
}

/// GET /metrics from berthd's endpoint on loopback: the answer. The
/// endpoint serves one scrape at a time (503 to another meanwhile): tried
/// again for up to a second.
pub async fn scrape_text(port: u16) -> Result<String> {
    let mut last = None;
    for _ in 0..20 {
        match scrape_once(port).await {
            Ok(t) => return Ok(t),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no scrape")))
}

async fn scrape_once(port: u16) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out).into_owned();
    if !text.starts_with("HTTP/1.0 200") && !text.starts_with("HTTP/1.1 200") {
        bail!(
            "the metrics endpoint answered {:?}",
            &text[..text.len().min(40)]
        );
    }
    Ok(text)
}

/// The `_sum` and `_count` series of `metric` by the value of `label`.
fn series(text: &str, metric: &str, label: &str) -> BTreeMap<String, (f64, f64)> {
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in text.lines() {
        for (suffix, sum) in [("_sum{", true), ("_count{", false)] {
            let Some(rest) = line
                .strip_prefix(metric)
                .and_then(|r| r.strip_prefix(suffix))
            else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let Some(name) = labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{label}=\"")))
                .and_then(|v| v.strip_suffix('"'))
            else {
                continue;
            };
            let Ok(v) = value.split_whitespace().next().unwrap_or("").parse::<f64>() else {
                continue;
            };
            let e = out.entry(name.to_string()).or_default();
            if sum {
                e.0 = v;
            } else {
                e.1 = v;
            }
        }
    }
    out
}

pub fn parse(text: &str) -> Sample {
    Sample {
        steps: series(text, "berth_step_duration_seconds", "step"),
        calls: series(text, "berth_cri_request_duration_seconds", "method"),
    }
}

/// The row of the shim's own start, which goes on after CreateContainer
/// has answered (StartContainer waits for it in start.await_create).
pub const SHIM_START: &str = "CreateContainer's shim";

/// The call a step belongs to, by its name.
fn call_of(step: &str) -> &'static str {
    match step.split('.').next().unwrap_or("") {
        "pod" => "RunPodSandbox",
        "shim" if step == "shim.bundle" => "CreateContainer",
        "container" => "CreateContainer",
        "shim" | "init" => SHIM_START,
        "start" => "StartContainer",
        "stop" => "StopContainer",
        "remove" => "RemoveContainer",
        "stop_pod" => "StopPodSandbox",
        "remove_pod" => "RemovePodSandbox",
        _ => "other",
    }
}

/// Steps that run inside another step (not added up again).
fn nested(step: &str) -> bool {
    // The shim's own (shim.ready: its main to its `ok` line, with
    // shim.detach, shim.config, shim.create) are inside shim.spawn (berthd's
    // wait for the shim's start line); init.* inside shim.create; a.b.c
    // inside a.b (pod.network.hostports in pod.network).
    step.starts_with("init.")
        || (step.starts_with("shim.") && !matches!(step, "shim.spawn" | "shim.bundle"))
        || step.matches('.').count() > 1
}

/// The phase between `before` and `after`, `lifecycles` of them.
pub fn between(before: &Sample, after: &Sample, lifecycles: u32) -> Vec<CallRow> {
    let delta = |a: &BTreeMap<String, (f64, f64)>, b: &BTreeMap<String, (f64, f64)>, k: &str| {
        let (s1, c1) = a.get(k).copied().unwrap_or_default();
        let (s0, c0) = b.get(k).copied().unwrap_or_default();
        (s1 - s0, c1 - c0)
    };
    let n = f64::from(lifecycles.max(1));
    let mut calls: Vec<CallRow> = [
        "RunPodSandbox",
        "CreateContainer",
        "StartContainer",
        "StopContainer",
        "RemoveContainer",
        "StopPodSandbox",
        "RemovePodSandbox",
    ]
    .iter()
    .map(|m| {
        let (s, c) = delta(&after.calls, &before.calls, m);
        CallRow {
            method: m.to_string(),
            mean_ms: if c > 0.0 { s / c * 1000.0 } else { f64::NAN },
            steps: Vec::new(),
        }
    })
    .collect();
    // The shim's start is no call of its own: its row's time is berthd's
    // wait for the start line.
    let (s, c) = delta(&after.steps, &before.steps, "shim.spawn");
    calls.push(CallRow {
        method: SHIM_START.to_string(),
        mean_ms: if c > 0.0 { s / c * 1000.0 } else { f64::NAN },
        steps: Vec::new(),
    });
    for step in after.steps.keys() {
        let (s, c) = delta(&after.steps, &before.steps, step);
        if c <= 0.0 {
            continue;
        }
        let call = call_of(step);
        if let Some(row) = calls.iter_mut().find(|r| r.method == call) {
            row.steps.push(StepRow {
                step: step.clone(),
                per_lifecycle: c / n,
                mean_ms: s / c * 1000.0,
            });
        }
    }
    for c in &mut calls {
        c.steps.sort_by(|a, b| {
            b.mean_ms
                .partial_cmp(&a.mean_ms)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    }
    calls
}

pub fn print(name: &str, what: &str, calls: &[CallRow]) {
    println!("{name:<11} where berthd's time goes ({what}; its own step spans, mean per call):");
    for c in calls {
        if c.steps.is_empty() {
            continue;
        }
        let top: f64 = c
            .steps
            .iter()
            .filter(|s| !nested(&s.step))
            .map(|s| s.mean_ms * s.per_lifecycle)
            .sum();
        if c.method == SHIM_START {
            println!(
                "{name:<11}   {:<28} {:>7.3} ms  (after CreateContainer's answer: berthd's wait for the shim's start line, StartContainer waits for it)",
                c.method, c.mean_ms,
            );
        } else {
            println!(
                "{name:<11}   {:<28} {:>7.3} ms  (steps {:.3} ms, the rest {:.3} ms: gRPC, locks, lookups)",
                c.method,
                c.mean_ms,
                top,
                c.mean_ms - top
            );
        }
        for s in &c.steps {
            println!(
                "{name:<11}     {}{:<26} {:>7.3} ms{}",
                if nested(&s.step) { "  " } else { "" },
                s.step,
                s.mean_ms,
                if (s.per_lifecycle - 1.0).abs() > 0.01 {
                    format!("  x{:.2} per lifecycle", s.per_lifecycle)
                } else {
                    String::new()
                }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_is_the_difference_of_two_scrapes_under_its_calls() {
        let before = parse(
            "berth_step_duration_seconds_sum{step=\"pod.dir\"} 0.010\n\
             berth_step_duration_seconds_count{step=\"pod.dir\"} 10\n\
             berth_cri_request_duration_seconds_sum{method=\"RunPodSandbox\"} 0.100\n\
             berth_cri_request_duration_seconds_count{method=\"RunPodSandbox\"} 10\n",
        );
        let after = parse(
            "berth_step_duration_seconds_sum{step=\"pod.dir\"} 0.030\n\
             berth_step_duration_seconds_count{step=\"pod.dir\"} 20\n\
             berth_step_duration_seconds_sum{step=\"init.mounts\"} 0.005\n\
             berth_step_duration_seconds_count{step=\"init.mounts\"} 10\n\
             berth_step_duration_seconds_bucket{step=\"pod.dir\",le=\"0.001\"} 20\n\
             berth_cri_request_duration_seconds_sum{method=\"RunPodSandbox\"} 0.130\n\
             berth_cri_request_duration_seconds_count{method=\"RunPodSandbox\"} 20\n",
        );
        let calls = between(&before, &after, 10);
        let run = calls.iter().find(|c| c.method == "RunPodSandbox").unwrap();
        assert!((run.mean_ms - 3.0).abs() < 1e-9, "{run:?}");
        assert_eq!(run.steps.len(), 1);
        assert!((run.steps[0].mean_ms - 2.0).abs() < 1e-9);
        assert!((run.steps[0].per_lifecycle - 1.0).abs() < 1e-9);
        let shim = calls.iter().find(|c| c.method == SHIM_START).unwrap();
        assert_eq!(shim.steps[0].step, "init.mounts");
        assert!((shim.steps[0].mean_ms - 0.5).abs() < 1e-9);
    }
}

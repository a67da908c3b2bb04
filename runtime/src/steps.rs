//! Per-step timings of the pod and container calls (issue 13): where a
//! RunPodSandbox, CreateContainer, StartContainer or StopPodSandbox spends
//! its time, as berthd measures it itself.
//!
//! Each step is a tracing span of target [`TARGET`] at debug level, named
//! after the step (`pod.netns_pin`, `container.rootfs_and_cgroup`, ...): any
//! tracing subscriber sees them (a JSON log with span events, a trace
//! collector), and berthd's own layer turns each closed one into the
//! Prometheus histogram `berth_step_duration_seconds{step}`. Steps timed
//! elsewhere (the shim's own clone, mounts and exec, reported on its start
//! line) come as events of the same target with the fields `step` and
//! `micros`, see [`sample`].

/// The tracing target of step spans and samples.
pub const TARGET: &str = "berth_step";

/// Enter a span for the step `$name` (a string literal) until the guard
/// drops; for sync code (in async code, `.instrument(step_span!(..))`).
#[macro_export]
macro_rules! step {
    ($name:literal) => {
        ::tracing::debug_span!(target: "berth_step", $name).entered()
    };
}

/// The span of the step `$name`, for `.instrument(..)` on a future.
#[macro_export]
macro_rules! step_span {
    ($name:literal) => {
        ::tracing::debug_span!(target: "berth_step", $name)
    };
}

/// A step timed somewhere else (the shim's own steps): `micros` of `step`.
pub fn sample(step: &str, micros: u64) {
    tracing::debug!(target: "berth_step", step, micros, "step");
}

/// The shim's start line after `ok <pid>`: `name=micros` pairs; what
/// does not parse is left out (an older or newer shim may say more).
pub fn parse_shim_steps(rest: &str) -> Vec<(String, u64)> {
    rest.split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let ok = !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            Some((k.to_string(), v.parse().ok()?)).filter(|_| ok)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_steps_parse_and_junk_is_left_out() {
        assert_eq!(
            parse_shim_steps("clone=120 mounts=800 bad x=y =3 pivot_root=40"),
            vec![
                ("clone".to_string(), 120),
                ("mounts".to_string(), 800),
                ("pivot_root".to_string(), 40)
            ]
        );
        assert!(parse_shim_steps("").is_empty());
    }
}

//! What Kubernetes puts on top of the streams: protocol names, header names,
//! stream types, and the JSON of the remotecommand error and resize streams.
//!
//! Over SPDY, exec and attach open one stream per stdio channel, each named by
//! its `streamType` header (`error`, `stdin`, `stdout`, `stderr`, `resize`);
//! port-forward opens an `error` and a `data` stream per forwarded connection,
//! both carrying `port` and the same `requestID`. Header names on the wire are
//! lower case (`streamtype`, `requestid`); [`crate::spdy::Headers`] looks them
//! up without regard to case, so the constants below can be used as they are.
//!
//! With remotecommand v4 (and v5) the server ends an exec by writing one
//! [`Status`] as JSON on the error stream; client-go's decoder
//! ([`decode_v4_status`] mirrors it) turns it into success, an exit code, or
//! an error message. v1 to v3 write a plain-text error instead, and nothing
//! on success.

use serde::{Deserialize, Serialize};

/// Protocol names negotiated with `X-Stream-Protocol-Version`.
pub mod protocol {
    /// remotecommand v1 (no negotiation; stdin/stdout/stderr/error).
    pub const REMOTECOMMAND_V1: &str = "channel.k8s.io";
    /// remotecommand v2: the error stream is written only on failure.
    pub const REMOTECOMMAND_V2: &str = "v2.channel.k8s.io";
    /// remotecommand v3: adds the resize stream.
    pub const REMOTECOMMAND_V3: &str = "v3.channel.k8s.io";
    /// remotecommand v4: the error stream carries a JSON `metav1.Status`
    /// with the exit code.
    pub const REMOTECOMMAND_V4: &str = "v4.channel.k8s.io";
    /// remotecommand v5: v4 plus a close signal; WebSocket only (kubelet's
    /// SPDY server does not offer it).
    pub const REMOTECOMMAND_V5: &str = "v5.channel.k8s.io";
    /// port-forward v1.
    pub const PORT_FORWARD_V1: &str = "portforward.k8s.io";

    /// What kubelet's SPDY streaming server accepts for exec and attach, in
    /// its order (the client's order decides; see `upgrade::negotiate`).
    pub const REMOTECOMMAND_SPDY: &[&str] = &[
        REMOTECOMMAND_V4,
        REMOTECOMMAND_V3,
        REMOTECOMMAND_V2,
        REMOTECOMMAND_V1,
    ];
    /// What kubelet's SPDY streaming server accepts for port-forward.
    pub const PORT_FORWARD: &[&str] = &[PORT_FORWARD_V1];
}

/// Header names.
pub mod header {
    /// Which channel a stream is (`streamtype` on the wire).
    pub const STREAM_TYPE: &str = "streamType";
    /// The forwarded port of a port-forward stream.
    pub const PORT: &str = "port";
    /// Pairs the error and data streams of one forwarded connection
    /// (`requestid` on the wire).
    pub const REQUEST_ID: &str = "requestID";
    /// HTTP header: the protocols a client offers; in the 101 response, the one chosen.
    pub const PROTOCOL_VERSION: &str = "X-Stream-Protocol-Version";
    /// HTTP header of a 403: the protocols the server accepts.
    pub const ACCEPTED_PROTOCOL_VERSIONS: &str = "X-Accepted-Stream-Protocol-Versions";
}

/// Values of the `streamType` header.
pub mod stream_type {
    /// Errors (remotecommand: the exit status; port-forward: failure text).
    pub const ERROR: &str = "error";
    /// The command's stdin.
    pub const STDIN: &str = "stdin";
    /// The command's stdout.
    pub const STDOUT: &str = "stdout";
    /// The command's stderr (absent with a TTY).
    pub const STDERR: &str = "stderr";
    /// Terminal size changes, a sequence of JSON [`super::TerminalSize`].
    pub const RESIZE: &str = "resize";
    /// Port-forward payload.
    pub const DATA: &str = "data";
}

/// `metav1.Status.status` on success.
pub const STATUS_SUCCESS: &str = "Success";
/// `metav1.Status.status` on failure.
pub const STATUS_FAILURE: &str = "Failure";
/// The reason of a Status for a command that exited non-zero.
pub const NON_ZERO_EXIT_CODE_REASON: &str = "NonZeroExitCode";
/// The cause type (JSON `reason`) whose message is the exit code.
pub const EXIT_CODE_CAUSE_TYPE: &str = "ExitCode";
/// The reason of an internal-error Status (`apierrors.NewInternalError`).
pub const INTERNAL_ERROR_REASON: &str = "InternalError";

fn is_zero(v: &i32) -> bool {
    *v == 0
}

/// `metav1.ListMeta`; always empty here (`"metadata":{}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListMeta {}

/// `metav1.Status` as the remotecommand v4 error stream carries it, fields in
/// Go's order so the JSON is byte-for-byte what kubelet writes
/// (`json.Marshal` of the status: empty fields left out, `metadata` always
/// there).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// TypeMeta.Kind (kubelet leaves it empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// TypeMeta.APIVersion (kubelet leaves it empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// Always `{}`.
    #[serde(default)]
    pub metadata: ListMeta,
    /// [`STATUS_SUCCESS`] or [`STATUS_FAILURE`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// Human-readable text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Machine-readable reason, e.g. [`NON_ZERO_EXIT_CODE_REASON`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Causes; the exit code travels here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    /// Suggested HTTP status code, 0 if unset.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub code: i32,
}

/// `metav1.StatusDetails`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    /// Name of the resource.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Its API group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Its kind.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Its UID.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The causes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
    /// Seconds before a retry.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retry_after_seconds: i32,
}

/// `metav1.StatusCause`. Go calls the first field `Type`; its JSON name is `reason`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCause {
    /// The cause type, e.g. [`EXIT_CODE_CAUSE_TYPE`] (JSON `reason`).
    #[serde(rename = "reason", default, skip_serializing_if = "String::is_empty")]
    pub cause_type: String,
    /// For an exit code, the code in decimal.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The field concerned.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
}

impl Status {
    /// `{"metadata":{},"status":"Success"}`: the command exited 0.
    pub fn success() -> Status {
        Status {
            status: STATUS_SUCCESS.into(),
            ..Status::default()
        }
    }

    /// The command exited with `code` (not 0). `detail` ends the message the
    /// way kubelet's does: `command terminated with non-zero exit code:
    /// <detail>` (containerd's detail reads `error executing command [sh -c
    /// exit 3], exit code 3`). client-go only accepts codes 0..=255.
    pub fn non_zero_exit(code: i32, detail: &str) -> Status {
        Status {
            status: STATUS_FAILURE.into(),
            message: format!("command terminated with non-zero exit code: {detail}"),
            reason: NON_ZERO_EXIT_CODE_REASON.into(),
            details: Some(StatusDetails {
                causes: vec![StatusCause {
                    cause_type: EXIT_CODE_CAUSE_TYPE.into(),
                    message: code.to_string(),
                    field: String::new(),
                }],
                ..StatusDetails::default()
            }),
            ..Status::default()
        }
    }

    /// The exec could not be run: what `apierrors.NewInternalError(err)`
    /// makes (kubelet sends it when the runtime fails).
    pub fn internal_error(err: &str) -> Status {
        Status {
            status: STATUS_FAILURE.into(),
            message: format!("Internal error occurred: {err}"),
            reason: INTERNAL_ERROR_REASON.into(),
            details: Some(StatusDetails {
                causes: vec![StatusCause {
                    message: err.into(),
                    ..StatusCause::default()
                }],
                ..StatusDetails::default()
            }),
            code: 500,
            ..Status::default()
        }
    }

    /// The JSON to write on the error stream.
    pub fn to_json(&self) -> Vec<u8> {
        // Plain strings and numbers: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// What client-go makes of a v4 error-stream message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecOutcome {
    /// `Success`.
    Success,
    /// `Failure` / `NonZeroExitCode` with a valid `ExitCode` cause.
    ExitCode(u8),
    /// Anything else: the error text client-go reports.
    Error(String),
}

/// Decodes an error-stream message as client-go's remotecommand v4
/// `errorDecoderV4` does (the messages are the ones it produces).
pub fn decode_v4_status(message: &[u8]) -> ExecOutcome {
    let status: Status = match serde_json::from_slice(message) {
        Ok(s) => s,
        Err(e) => {
            return ExecOutcome::Error(format!(
                "error stream protocol error: {e} in {:?}",
                String::from_utf8_lossy(message)
            ));
        }
    };
    match status.status.as_str() {
        STATUS_SUCCESS => ExecOutcome::Success,
        STATUS_FAILURE if status.reason == NON_ZERO_EXIT_CODE_REASON => {
            let Some(details) = &status.details else {
                return ExecOutcome::Error(
                    "error stream protocol error: details must be set".into(),
                );
            };
            match details
                .causes
                .iter()
                .find(|c| c.cause_type == EXIT_CODE_CAUSE_TYPE)
            {
                Some(c) => match c.message.parse::<u8>() {
                    Ok(rc) => ExecOutcome::ExitCode(rc),
                    Err(_) => ExecOutcome::Error(format!(
                        "error stream protocol error: invalid exit code value {:?}",
                        c.message
                    )),
                },
                None => ExecOutcome::Error(format!(
                    "error stream protocol error: no {EXIT_CODE_CAUSE_TYPE} cause given"
                )),
            }
        }
        STATUS_FAILURE => ExecOutcome::Error(status.message),
        _ => ExecOutcome::Error("error stream protocol error: unknown error".into()),
    }
}

/// A terminal size on the resize stream: `{"Width":80,"Height":24}` (Go's
/// `remotecommand.TerminalSize` has no JSON tags). The stream carries one
/// object after another.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

impl TerminalSize {
    /// The JSON of one resize message.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Splits the bytes of a resize stream into the sizes it carries, as Go's
/// `json.Decoder` reads them back to back. Returns the sizes and how many
/// bytes they took; the rest is an incomplete object to keep for later. A
/// malformed object ends the stream for kubelet; here it is an error.
pub fn parse_resizes(buf: &[u8]) -> Result<(Vec<TerminalSize>, usize), serde_json::Error> {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<TerminalSize>();
    let mut sizes = Vec::new();
    let mut used = 0;
    loop {
        match it.next() {
            Some(Ok(s)) => {
                sizes.push(s);
                used = it.byte_offset();
            }
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    Ok((sizes, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_is_what_kubelet_writes() {
        assert_eq!(
            String::from_utf8(Status::success().to_json()).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        assert_eq!(
            String::from_utf8(
                Status::non_zero_exit(3, "error executing command [sh -c exit 3], exit code 3")
                    .to_json()
            )
            .unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        assert_eq!(
            String::from_utf8(Status::internal_error("boom").to_json()).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: boom","reason":"InternalError","details":{"causes":[{"message":"boom"}]},"code":500}"#
        );
    }

    #[test]
    fn v4_decoding_matches_client_go() {
        assert_eq!(
            decode_v4_status(&Status::success().to_json()),
            ExecOutcome::Success
        );
        assert_eq!(
            decode_v4_status(&Status::non_zero_exit(42, "x").to_json()),
            ExecOutcome::ExitCode(42)
        );
        assert_eq!(
            decode_v4_status(&Status::internal_error("boom").to_json()),
            ExecOutcome::Error("Internal error occurred: boom".into())
        );
        assert!(matches!(
            decode_v4_status(&Status::non_zero_exit(300, "x").to_json()),
            ExecOutcome::Error(m) if m.contains("invalid exit code value \"300\"")
        ));
        assert!(matches!(
            decode_v4_status(br#"{"status":"Failure","reason":"NonZeroExitCode"}"#),
            ExecOutcome::Error(m) if m.contains("details must be set")
        ));
        assert!(
            matches!(decode_v4_status(b"not json"), ExecOutcome::Error(m) if m.contains("protocol error"))
        );
        // Fields Go would add (apiVersion, kind) are accepted.
        assert_eq!(
            decode_v4_status(
                br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success"}"#
            ),
            ExecOutcome::Success
        );
    }

    #[test]
    fn resize_messages() {
        let s = TerminalSize {
            width: 80,
            height: 24,
        };
        assert_eq!(s.to_json(), br#"{"Width":80,"Height":24}"#);
        let mut wire = s.to_json();
        wire.extend_from_slice(br#"{"Width":100,"Height":50}{"Wid"#);
        let (sizes, used) = parse_resizes(&wire).unwrap();
        assert_eq!(
            sizes,
            vec![
                s,
                TerminalSize {
                    width: 100,
                    height: 50
                }
            ]
        );
        assert_eq!(&wire[used..], br#"{"Wid"#);
        assert!(parse_resizes(br#"{"Width":"x"}"#).is_err());
    }
}

//! Domain errors to gRPC status codes, logged once here.

use berth_image::error::ErrorKind;
use tonic::{Code, Status};

/// A CRI call berth does not implement yet: UNIMPLEMENTED, naming the call,
/// so that kubelet falls back where it can (the Stream* list calls to the
/// unary List* calls) and a person reading a log knows which call it was.
pub fn not_yet(call: &str) -> Status {
    Status::unimplemented(format!("{call} is not implemented by berth yet"))
}

pub fn image_error(e: berth_image::Error) -> Status {
    let code = match e.kind() {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::DataLoss => Code::DataLoss,
        ErrorKind::Internal => Code::Internal,
    };
    let msg = e.to_string();
    if code == Code::Internal {
        tracing::error!(error = %msg, "request failed");
    } else {
        tracing::warn!(code = ?code, error = %msg, "request failed");
    }
    Status::new(code, msg)
}

pub fn runtime_error(e: berth_runtime::error::Error) -> Status {
    use berth_runtime::error::ErrorKind as K;
    let code = match e.kind() {
        K::InvalidArgument => Code::InvalidArgument,
        K::NotFound => Code::NotFound,
        K::AlreadyExists => Code::AlreadyExists,
        K::FailedPrecondition => Code::FailedPrecondition,
        K::DeadlineExceeded => Code::DeadlineExceeded,
        K::ResourceExhausted => Code::ResourceExhausted,
        K::Unavailable => Code::Unavailable,
        K::Internal => Code::Internal,
    };
    let msg = e.to_string();
    if code == Code::Internal {
        tracing::error!(error = %msg, "request failed");
    } else {
        tracing::warn!(code = ?code, error = %msg, "request failed");
    }
    Status::new(code, msg)
}

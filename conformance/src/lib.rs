//! berth conformance harness

//! Helpers shared by the scenario files.
#![allow(dead_code)]

use std::path::Path;

use berth_conformance::util::unique_suffix;
use berth_cri_api::v1::Image;
use serde_json::Value;
use tonic::{Code, Status};

/// A unique marker string (file contents that the test can look for).
pub fn marker(what: &str) -> String {
    format!("berth-conformance {what} {}", unique_suffix())
}

/// Panics unless `r` is an error with one of `codes`; returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(r: Result<T, Status>, codes: &[Code], what: &str) -> Status {
    match r {
        Ok(v) => panic!("{what}: expected an error with code {codes:?}, got Ok({v:?})"),
        Err(s) => {
            assert!(
                codes.contains(&s.code()),
                "{what}: expected code {codes:?}, got {:?}: {}",
                s.code(),
                s.message()
            );
            assert!(
                !s.message().trim().is_empty(),
                "{what}: error without a message"
            );
            s
        }
    }
}

/// Panics unless `r` is an error (any code) with a message.
#[track_caller]
pub fn expect_err<T: std::fmt::Debug>(r: Result<T, Status>, what: &str) -> Status {
    match r {
        Ok(v) => panic!("{what}: expected an error, got Ok({v:?})"),
        Err(s) => {
            assert!(
                !s.message().trim().is_empty(),
                "{what}: error {:?} without a message",
                s.code()
            );
            s
        }
    }
}

/// The images with this id.
pub fn with_id<'a>(images: &'a [Image], id: &str) -> Vec<&'a Image> {
    images.iter().filter(|i| i.id == id).collect()
}

/// Find, anywhere in a JSON document, the first object that has `key`.
pub fn find_object_with_key<'a>(
    v: &'a Value,
    key: &str,
) -> Option<&'a serde_json::Map<String, Value>> {
    match v {
        Value::Object(m) => {
            if m.contains_key(key) {
                return Some(m);
            }
            m.values().find_map(|x| find_object_with_key(x, key))
        }
        Value::Array(a) => a.iter().find_map(|x| find_object_with_key(x, key)),
        _ => None,
    }
}

/// An empty directory outside berthd's root (inside the test's temp dir) that
/// hostile layers try to reach, with a file `secret` in it.
pub fn outside_dir(test_dir: &Path) -> std::path::PathBuf {
    let d = test_dir.join("outside");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("secret"), b"host secret\n").unwrap();
    d
}

/// Names of everything in `dir` (one level).
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

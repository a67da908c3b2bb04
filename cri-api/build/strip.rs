//! Removes the field option `debug_redact = true` from a .proto text.
//!
//! `debug_redact` (protobuf 22+) marks a field that text formats must not
//! print. Debian's protoc 3.21 does not know it and refuses the whole file
//! ("Option \"debug_redact\" unknown"), and prost has no use for it, so the
//! build compiles a copy without it. Only `[...]` option lists on the code
//! part of a line are touched (not comments); other options in the same list
//! stay, and an emptied list goes with the space before it.

/// The text with every `debug_redact = true` field option removed, or an
/// error naming the line when `debug_redact` is left in code in a form this
/// does not handle (so that a new shape upstream fails the build loudly).
pub fn strip_debug_redact(src: &str) -> Result<String, String> {
    let mut out = String::with_capacity(src.len());
    for (n, line) in src.split_inclusive('\n').enumerate() {
        let (code, comment) = match line.find("//") {
            Some(i) => line.split_at(i),
            None => (line, ""),
        };
        let code = strip_line(code);
        if code.contains("debug_redact") {
            return Err(format!(
                "line {}: `debug_redact` in a form the build script does not strip: {}",
                n + 1,
                line.trim_end()
            ));
        }
        out.push_str(&code);
        out.push_str(comment);
    }
    Ok(out)
}

fn strip_line(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']').map(|c| open + c) else {
            break;
        };
        let kept: Vec<&str> = rest[open + 1..close]
            .split(',')
            .filter(|opt| !is_debug_redact(opt))
            .collect();
        let before = &rest[..open];
        if kept.iter().all(|o| o.trim().is_empty()) {
            out.push_str(before.trim_end());
        } else {
            out.push_str(before);
            out.push('[');
            out.push_str(kept.join(",").trim());
            out.push(']');
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

fn is_debug_redact(opt: &str) -> bool {
    let Some((name, value)) = opt.split_once('=') else {
        return false;
    };
    name.trim() == "debug_redact" && value.trim() == "true"
}

#[cfg(test)]
mod tests {
    use super::strip_debug_redact;

    #[test]
    fn removes_a_lone_option_and_its_space() {
        let src = "    string password = 2 [debug_redact = true];\n";
        assert_eq!(
            strip_debug_redact(src).unwrap(),
            "    string password = 2;\n"
        );
    }

    #[test]
    fn keeps_other_options_of_the_same_list() {
        let src = "  string a = 1 [deprecated = true, debug_redact=true];\n";
        assert_eq!(
            strip_debug_redact(src).unwrap(),
            "  string a = 1 [deprecated = true];\n"
        );
        let src = "  string a = 1 [debug_redact = true, deprecated = true];\n";
        assert_eq!(
            strip_debug_redact(src).unwrap(),
            "  string a = 1 [deprecated = true];\n"
        );
    }

    #[test]
    fn leaves_comments_and_other_lines_alone() {
        let src = "// see [debug_redact = true]\nmessage M {\n  string a = 1; // [debug_redact = true]\n}\n";
        assert_eq!(strip_debug_redact(src).unwrap(), src);
    }

    #[test]
    fn refuses_a_form_it_does_not_strip() {
        let src = "  string a = 1 [\n    debug_redact = true];\n";
        let err = strip_debug_redact(src).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn the_vendored_proto_comes_out_without_debug_redact() {
        let src = include_str!("../proto/api.proto");
        assert!(src.contains("[debug_redact = true]"));
        let out = strip_debug_redact(src).unwrap();
        assert!(!out.contains("[debug_redact = true]"));
        assert_eq!(
            out.lines().count(),
            src.lines().count(),
            "lines are kept, so protoc's line numbers match the vendored file"
        );
    }
}

//! Configuration parsing under arbitrary text.
//!
//! `xmppwall check` and every reload run this code on files an operator edits by
//! hand: it must never panic, and every problem it reports about the file must
//! point into the file (a line and column that exist).
//!
//! Inputs naming `/dev`, `/proc` or `/sys` are skipped: an `include` or list file
//! there could be endless (`/dev/zero`), which tells nothing about the parser.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xmppwall_proxy::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    let path = Path::new("/nonexistent/xmppwall-fuzz/xmppwall.toml");
    let Err(error) = Config::parse(path, text) else {
        return;
    };
    assert!(!error.problems.is_empty(), "an error without a problem");
    let lines: Vec<&str> = text.split('\n').collect();
    for problem in error.problems.iter().filter(|p| p.file == path) {
        assert!(
            (1..=lines.len()).contains(&problem.line),
            "{problem}: line outside the file ({} lines)",
            lines.len()
        );
        let line_chars = lines[problem.line - 1].chars().count();
        assert!(
            (1..=line_chars + 1).contains(&problem.column),
            "{problem}: column outside line {} ({line_chars} characters)",
            problem.line
        );
    }
});

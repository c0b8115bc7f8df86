//! The example policies in `examples/`, replayed against their recordings with
//! `xmppwall replay`, and a recording xmppwall writes itself, replayed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::wall::{Wall, WallConfig};
use support::xml;
use support::{Prosody, ALICE, BOB};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// `xmppwall replay --verbose ARGS`: the per-stanza lines as (line number, verdict).
fn replay(args: &[&str]) -> (Vec<(usize, String)>, String) {
    let out = Command::new(support::xmppwall::binary())
        .arg("replay")
        .arg("--verbose")
        .args(args)
        .output()
        .expect("running xmppwall replay");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts = stdout
        .lines()
        .filter_map(|l| {
            let (place, verdict) = l.split_once(": ")?;
            let line = place.rsplit(':').next()?.parse().ok()?;
            Some((line, verdict.to_owned()))
        })
        .collect();
    (verdicts, stdout)
}

fn expect(list: &[(usize, &str)]) -> Vec<(usize, String)> {
    list.iter().map(|(n, v)| (*n, v.to_string())).collect()
}

#[test]
fn public_policy_example_gives_each_recorded_stanza_its_verdict() {
    let rules = examples().join("policy-public.toml");
    let recording = examples().join("recordings/public.jsonl");
    let (verdicts, stdout) = replay(&[
        "--rules",
        rules.to_str().unwrap(),
        recording.to_str().unwrap(),
    ]);
    assert_eq!(
        verdicts,
        expect(&[
            (1, "drop by remote-normal-with-subject"),
            (2, "pass"),
            (3, "pass"),
            (4, "bounce(policy-violation) by bad-url-out"),
            (5, "drop by bad-url-in"),
            (6, "bounce(not-acceptable) by spam-keywords"),
            (7, "drop by marked-no-links"),
            (8, "pass"),
            (9, "pass"),
            (10, "pass"),
        ]),
        "{stdout}"
    );
    // The shadowed rule matched once without deciding anything.
    let shadow_row = stdout
        .lines()
        .find(|l| l.starts_with("to-server/crypto-giveaway"))
        .expect("a row for the shadow rule");
    assert_eq!(
        shadow_row.split_whitespace().collect::<Vec<_>>(),
        ["to-server/crypto-giveaway", "0", "0", "1"]
    );
}

#[test]
fn corporate_policy_example_gives_each_recorded_stanza_its_verdict() {
    let rules = examples().join("policy-corporate.toml");
    let recording = examples().join("recordings/corporate.jsonl");
    let (verdicts, stdout) = replay(&[
        "--rules",
        rules.to_str().unwrap(),
        recording.to_str().unwrap(),
    ]);
    assert_eq!(
        verdicts,
        expect(&[
            (1, "bounce(not-allowed) by no-file-transfer-out"),
            (2, "bounce(not-allowed) by no-file-transfer-out"),
            (3, "drop by no-file-transfer-in"),
            (4, "bounce(not-acceptable) by payment-data-leak"),
            (5, "pass"),
            (6, "pass"),
            (
                7,
                "bounce(policy-violation) by contractors-messages-office-hours"
            ),
            (8, "pass"),
            (9, "pass"),
        ]),
        "{stdout}"
    );
}

#[test]
fn a_recording_xmppwall_writes_replays_to_the_verdicts_it_gave_live() {
    let prosody = Prosody::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let recording = dir.path().join("recording.jsonl");
    let policy = examples().join("policy-public.toml");
    let mut wall = Wall::start(
        prosody.c2s,
        WallConfig {
            top: format!("include = [\"{}\"]", policy.display()),
            tables: format!("[record]\npath = \"{}\"\n", recording.display()),
            ..WallConfig::default()
        },
    );
    let (mut alice, _) = wall.login(ALICE, "a");
    let (mut bob, bob_jid) = wall.login(BOB, "b");
    alice.send_raw(format!(
        "<message to='{bob_jid}' type='chat' id='live1'><body>free money for you</body></message>"
    ));
    let refused =
        alice.read_element_matching(|e| xml::root_attr(e, "id").as_deref() == Some("live1"));
    assert_eq!(
        xml::root_attr(&refused, "type").as_deref(),
        Some("error"),
        "{refused}"
    );
    alice.send_raw(format!(
        "<message to='{bob_jid}' type='chat' id='live2'><body>hello</body></message>"
    ));
    let got = bob.read_element_matching(|e| xml::root_name(e) == "message");
    assert_eq!(xml::root_attr(&got, "id").as_deref(), Some("live2"));

    // Stop xmppwall so the recording is complete, then replay it.
    wall.xmppwall.send_signal("TERM");
    wall.xmppwall
        .wait_exit(Duration::from_secs(10))
        .expect("xmppwall exits");
    let text = std::fs::read_to_string(&recording).expect("the recording was written");
    let live1 = text
        .lines()
        .position(|l| l.contains("live1"))
        .expect("live1 recorded")
        + 1;
    let live2 = text
        .lines()
        .position(|l| l.contains("live2"))
        .expect("live2 recorded")
        + 1;
    let (verdicts, stdout) = replay(&[
        "--config",
        wall.xmppwall.config_path.to_str().unwrap(),
        recording.to_str().unwrap(),
    ]);
    assert!(
        verdicts.contains(&(live1, "bounce(not-acceptable) by spam-keywords".into())),
        "{stdout}"
    );
    assert!(verdicts.contains(&(live2, "pass".into())), "{stdout}");
}

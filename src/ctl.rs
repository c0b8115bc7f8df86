//! `xmppwall ctl`: the admin API from the command line.
//!
//! Every subcommand is one request to a running xmppwall's admin API; the answer is
//! printed as a table (or, with `--json`, as the API's JSON). The address and token
//! come from the flags, then `XMPPWALL_ADMIN` / `XMPPWALL_TOKEN`, then the `[admin]`
//! section of the configuration file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use xmppwall_proxy::config::{Config, DEFAULT_ADMIN_LISTEN};

#[derive(Args)]
pub struct Ctl {
    /// The admin API: `HOST:PORT` or `http://HOST:PORT` (default: $XMPPWALL_ADMIN,
    /// then `[admin] listen` of --config).
    #[arg(long, global = true)]
    admin: Option<String>,
    /// The admin token (default: $XMPPWALL_TOKEN, then `[admin]` of --config).
    #[arg(long, global = true)]
    token: Option<String>,
    /// The configuration file to read the admin address and token from.
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Counters, table sizes, limit and rule hits.
    Stats,
    /// Live sessions, optionally filtered.
    Sessions {
        #[command(flatten)]
        filter: Filter,
    },
    /// End a session (by id) or every session matching a filter with a stream error.
    Kick {
        /// The session id (see `sessions`).
        id: Option<u64>,
        #[command(flatten)]
        filter: Filter,
        /// An RFC 6120 §4.9.3 condition, e.g. policy-violation, conflict, reset.
        #[arg(long, default_value = "policy-violation")]
        condition: String,
        /// A text for the client.
        #[arg(long)]
        text: Option<String>,
    },
    /// The bans in force.
    Bans,
    /// Ban an address or prefix, an account, or a domain.
    Ban {
        /// address (an address or a prefix), account, or domain.
        kind: String,
        value: String,
        /// How long, e.g. 30m, 7d (default: until lifted).
        #[arg(long)]
        duration: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        /// Keep the live sessions the ban covers (default: they are ended).
        #[arg(long)]
        no_kick: bool,
    },
    /// Lift a ban.
    Unban { kind: String, value: String },
    /// Reload the configuration, rules, lists and certificates (like SIGHUP).
    Reload,
    /// Recent verdicts other than pass: the durable audit trail (with rule and limit
    /// names), or with --memory the last refusals as the peers got them.
    Verdicts {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        memory: bool,
    },
    /// Who sent the most over the last N seconds.
    Talkers {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// connection, account or address.
        #[arg(long, default_value = "connection")]
        by: String,
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// Spam reports, newest first.
    Reports {
        /// Only about this JID or address.
        #[arg(long)]
        subject: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Reputation scores (one subject, or the most recently changed).
    Reputation {
        #[arg(long)]
        subject: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// The policy's lists (name, kind, size, where from), or one list's entries.
    Lists {
        /// A list's name: print its entries.
        name: Option<String>,
    },
    /// The Prometheus exposition, as served.
    Metrics,
}

#[derive(Args, Default)]
struct Filter {
    /// An address or prefix.
    #[arg(long)]
    ip: Option<String>,
    /// A bare JID (every resource) or a full JID.
    #[arg(long)]
    jid: Option<String>,
    /// A domain (of the JID or of the stream).
    #[arg(long)]
    domain: Option<String>,
}

impl Filter {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(v) = &self.ip {
            q.push(("ip", v.clone()));
        }
        if let Some(v) = &self.jid {
            q.push(("jid", v.clone()));
        }
        if let Some(v) = &self.domain {
            q.push(("domain", v.clone()));
        }
        q
    }

    fn is_empty(&self) -> bool {
        self.ip.is_none() && self.jid.is_none() && self.domain.is_none()
    }
}

struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    fn new(ctl: &Ctl) -> anyhow::Result<Client> {
        let from_config = match &ctl.config {
            Some(path) => Some(
                Config::load(path)
                    .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?
                    .admin
                    .with_context(|| format!("{} has no [admin] section", path.display()))?,
            ),
            None => None,
        };
        let address = ctl
            .admin
            .clone()
            .or_else(|| std::env::var("XMPPWALL_ADMIN").ok())
            .or_else(|| from_config.as_ref().map(|a| a.listen.to_string()))
            .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_owned());
        let base = if address.starts_with("http://") || address.starts_with("https://") {
            address.trim_end_matches('/').to_owned()
        } else {
            format!("http://{address}")
        };
        let token = ctl
            .token
            .clone()
            .or_else(|| std::env::var("XMPPWALL_TOKEN").ok())
            .or_else(|| from_config.and_then(|a| a.token));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Ok(Client { base, token, agent })
    }

    fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// Sends one request; returns the body of a 2xx answer, or the API's error.
    fn call(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let response = match method {
            "GET" | "DELETE" => {
                let mut r = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                for (k, v) in query {
                    r = r.query(*k, v);
                }
                if let Some(a) = self.auth() {
                    r = r.header("Authorization", &a);
                }
                r.call()
            }
            _ => {
                let mut r = self.agent.post(&url);
                if let Some(a) = self.auth() {
                    r = r.header("Authorization", &a);
                }
                r.send_json(body.unwrap_or_else(|| json!({})))
            }
        }
        .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = response.status();
        let text = response
            .into_body()
            .read_to_string()
            .context("cannot read the admin API's answer")?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(text);
            bail!("{} ({status})", message.trim_end());
        }
        Ok(text)
    }

    fn json(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let text = self.call(method, path, query, body)?;
        serde_json::from_str(&text).context("the admin API answered something that is not JSON")
    }
}

/// Runs one `ctl` subcommand.
pub fn run(ctl: Ctl) -> anyhow::Result<()> {
    let client = Client::new(&ctl)?;
    let (value, table): (Value, fn(&Value) -> String) = match &ctl.command {
        CtlCommand::Metrics => {
            print!("{}", client.call("GET", "/metrics", &[], None)?);
            return Ok(());
        }
        CtlCommand::Stats => (client.json("GET", "/v1/stats", &[], None)?, stats_table),
        CtlCommand::Sessions { filter } => (
            client.json("GET", "/v1/sessions", &filter.query(), None)?,
            sessions_table,
        ),
        CtlCommand::Kick {
            id,
            filter,
            condition,
            text,
        } => {
            let mut body = json!({ "condition": condition, "text": text });
            let path = match id {
                Some(id) => format!("/v1/sessions/{id}/kick"),
                None if filter.is_empty() => bail!("give a session id, or --ip, --jid or --domain"),
                None => {
                    for (k, v) in filter.query() {
                        body[k] = json!(v);
                    }
                    "/v1/sessions/kick".to_owned()
                }
            };
            (client.json("POST", &path, &[], Some(body))?, kick_table)
        }
        CtlCommand::Bans => (client.json("GET", "/v1/bans", &[], None)?, bans_table),
        CtlCommand::Ban {
            kind,
            value,
            duration,
            reason,
            no_kick,
        } => (
            client.json(
                "POST",
                "/v1/bans",
                &[],
                Some(json!({
                    "kind": kind, "value": value, "duration": duration,
                    "reason": reason, "kick": !no_kick,
                })),
            )?,
            ban_table,
        ),
        CtlCommand::Unban { kind, value } => (
            client.json(
                "DELETE",
                "/v1/bans",
                &[("kind", kind.clone()), ("value", value.clone())],
                None,
            )?,
            |v| {
                format!(
                    "lifted the ban on {} {}\n",
                    s(&v["lifted"]["kind"]),
                    s(&v["lifted"]["value"])
                )
            },
        ),
        CtlCommand::Reload => (client.json("POST", "/v1/reload", &[], None)?, |v| {
            format!("reloaded {}\n", s(&v["reloaded"]))
        }),
        CtlCommand::Verdicts { limit, memory } => {
            let source = if *memory { "memory" } else { "store" };
            let v = client.json(
                "GET",
                "/v1/verdicts",
                &[("limit", limit.to_string()), ("source", source.to_owned())],
                None,
            )?;
            (v, verdicts_table)
        }
        CtlCommand::Talkers { seconds, by, limit } => (
            client.json(
                "GET",
                "/v1/talkers",
                &[
                    ("seconds", seconds.to_string()),
                    ("by", by.clone()),
                    ("limit", limit.to_string()),
                ],
                None,
            )?,
            talkers_table,
        ),
        CtlCommand::Reports { subject, limit } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(subject) = subject {
                q.push(("subject", subject.clone()));
            }
            (client.json("GET", "/v1/reports", &q, None)?, reports_table)
        }
        CtlCommand::Lists { name: None } => {
            (client.json("GET", "/v1/lists", &[], None)?, lists_table)
        }
        CtlCommand::Lists { name: Some(name) } => {
            let path = format!("/v1/lists/{}", percent_encode(name));
            (client.json("GET", &path, &[], None)?, list_table)
        }
        CtlCommand::Reputation { subject, limit } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(subject) = subject {
                q.push(("subject", subject.clone()));
            }
            (
                client.json("GET", "/v1/reputation", &q, None)?,
                reputation_table,
            )
        }
    };
    if ctl.json {
        println!("{value:#}");
    } else {
        print!("{}", table(&value));
    }
    Ok(())
}

/// A JSON value as a table cell.
fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Left-aligned columns, as wide as their widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn stats_table(v: &Value) -> String {
    let mut rows = vec![
        vec!["uptime".into(), format!("{}s", s(&v["uptime_seconds"]))],
        vec!["config".into(), s(&v["config"])],
        vec![
            "connections accepted".into(),
            s(&v["connections"]["accepted"]),
        ],
        vec!["connections open".into(), s(&v["connections"]["open"])],
        vec!["sessions".into(), s(&v["connections"]["sessions"])],
    ];
    if let Some(fronts) = v["connections"]["by_front"].as_object() {
        for (front, c) in fronts {
            rows.push(vec![
                format!("{front} accepted/open/sessions"),
                format!(
                    "{}/{}/{}",
                    s(&c["accepted"]),
                    s(&c["open"]),
                    s(&c["sessions"])
                ),
            ]);
        }
    }
    rows.extend([
        vec!["sasl successes".into(), s(&v["sasl"]["successes"])],
        vec!["sasl failures".into(), s(&v["sasl"]["failures"])],
        vec!["stanzas to server".into(), s(&v["stanzas"]["to_server"])],
        vec!["stanzas to client".into(), s(&v["stanzas"]["to_client"])],
        vec!["stanzas bounced".into(), s(&v["stanzas"]["bounced"])],
        vec![
            "streams closed by error".into(),
            s(&v["streams_closed_by_error"]),
        ],
        vec![
            "address table".into(),
            format!(
                "{}/{} ({} evicted)",
                s(&v["tables"]["addresses"]["entries"]),
                s(&v["tables"]["addresses"]["cap"]),
                s(&v["tables"]["addresses"]["evictions"])
            ),
        ],
        vec![
            "account table".into(),
            format!(
                "{}/{} ({} evicted)",
                s(&v["tables"]["accounts"]["entries"]),
                s(&v["tables"]["accounts"]["cap"]),
                s(&v["tables"]["accounts"]["evictions"])
            ),
        ],
    ]);
    if let Some(hits) = v["limit_hits"].as_object() {
        for (k, n) in hits.iter().filter(|(_, n)| n.as_u64() != Some(0)) {
            rows.push(vec![format!("limit {k}"), s(n)]);
        }
    }
    for r in list(v, "rules") {
        rows.push(vec![
            format!("rule {}/{}", s(&r["chain"]), s(&r["rule"])),
            format!("{} (shadow {})", s(&r["hits"]), s(&r["shadow_hits"])),
        ]);
    }
    table(&["WHAT", "VALUE"], &rows)
}

fn sessions_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = list(v, "sessions")
        .iter()
        .map(|x| {
            // A server-to-server or component stream shows its peer domains.
            let who = match (&x["jid"], list(x, "domains")) {
                (Value::Null, domains) if !domains.is_empty() => {
                    domains.iter().map(s).collect::<Vec<_>>().join(",")
                }
                (jid, _) => s(jid),
            };
            vec![
                s(&x["id"]),
                s(&x["front"]),
                s(&x["peer"]),
                who,
                s(&x["to"]),
                format!("{}s", s(&x["duration_seconds"])),
                format!(
                    "{}/{}",
                    s(&x["stanzas_from_client"]),
                    s(&x["stanzas_to_client"])
                ),
                format!(
                    "{}/{}",
                    s(&x["bytes_from_client"]),
                    s(&x["bytes_to_client"])
                ),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "FRONT",
            "PEER",
            "JID/DOMAINS",
            "TO",
            "AGE",
            "STANZAS IN/OUT",
            "BYTES IN/OUT",
        ],
        &rows,
    )
}

fn lists_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = list(v, "lists")
        .iter()
        .map(|x| {
            vec![
                s(&x["name"]),
                s(&x["kind"]),
                s(&x["size"]),
                match &x["file"] {
                    Value::Null => "inline".into(),
                    file => s(file),
                },
                s(&x["loaded"]),
            ]
        })
        .collect();
    table(&["NAME", "KIND", "SIZE", "SOURCE", "LOADED"], &rows)
}

/// One list: a header line, then one entry per line.
fn list_table(v: &Value) -> String {
    let from = match &v["file"] {
        Value::Null => "inline".into(),
        file => s(file),
    };
    let mut out = format!(
        "# {} ({}, {} entries, {from}, loaded {})\n",
        s(&v["name"]),
        s(&v["kind"]),
        s(&v["size"]),
        s(&v["loaded"])
    );
    for e in list(v, "entries") {
        out.push_str(&s(e));
        out.push('\n');
    }
    out
}

/// A path segment with everything but unreserved characters percent-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn kick_table(v: &Value) -> String {
    let ids: Vec<String> = list(v, "kicked").iter().map(s).collect();
    if ids.is_empty() {
        "no session matched\n".into()
    } else {
        format!("kicked {} with <{}/>\n", ids.join(", "), s(&v["condition"]))
    }
}

fn bans_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = list(v, "bans")
        .iter()
        .map(|b| {
            vec![
                s(&b["kind"]),
                s(&b["value"]),
                s(&b["until"]),
                s(&b["source"]),
                s(&b["reason"]),
            ]
        })
        .collect();
    table(&["KIND", "VALUE", "UNTIL", "SOURCE", "REASON"], &rows)
}

fn ban_table(v: &Value) -> String {
    let b = &v["ban"];
    let until = match &b["until"] {
        Value::Null => "until lifted".to_owned(),
        t => format!("until {}", s(t)),
    };
    let kicked: Vec<String> = list(v, "kicked").iter().map(s).collect();
    let mut out = format!("banned {} {} {until}\n", s(&b["kind"]), s(&b["value"]));
    if !kicked.is_empty() {
        out.push_str(&format!("kicked {}\n", kicked.join(", ")));
    }
    out
}

fn verdicts_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = list(v, "verdicts")
        .iter()
        .map(|x| {
            if v["source"] == json!("memory") {
                vec![
                    s(&x["at"]),
                    s(&x["address"]),
                    s(&x["jid"]),
                    s(&x["direction"]),
                    s(&x["verdict"]),
                    s(&x["condition"]),
                ]
            } else {
                vec![
                    s(&x["at"]),
                    s(&x["address"]),
                    s(&x["jid"]),
                    s(&x["hook"]),
                    s(&x["verdict"]),
                    format!("{} {}", s(&x["by"]), s(&x["name"])),
                ]
            }
        })
        .collect();
    let last = if v["source"] == json!("memory") {
        "CONDITION"
    } else {
        "BY"
    };
    table(&["AT", "ADDRESS", "JID", "WHERE", "VERDICT", last], &rows)
}

fn reports_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = list(v, "reports")
        .iter()
        .map(|x| {
            vec![
                s(&x["at"]),
                s(&x["reporter"]),
                s(&x["subject"]),
                s(&x["reason"]),
                s(&x["text"]),
            ]
        })
        .collect();
    table(&["AT", "REPORTER", "SUBJECT", "REASON", "TEXT"], &rows)
}

fn reputation_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = list(v, "reputation")
        .iter()
        .map(|x| vec![s(&x["subject"]), s(&x["score"]), s(&x["updated"])])
        .collect();
    table(&["SUBJECT", "SCORE", "UPDATED"], &rows)
}

fn talkers_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = list(v, "talkers")
        .iter()
        .map(|x| {
            vec![
                s(&x["key"]),
                s(&x["sessions"]),
                s(&x["stanzas"]),
                s(&x["bytes"]),
            ]
        })
        .collect();
    format!(
        "over the last {}s, by {}\n{}",
        s(&v["window_seconds"]),
        s(&v["by"]),
        table(&["WHO", "SESSIONS", "STANZAS", "BYTES"], &rows)
    )
}

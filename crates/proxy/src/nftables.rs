//! Exporting address bans to the kernel: an nftables set kept in sync with the bans
//! in force, so a banned address is dropped before it reaches xmppwall.
//!
//! Owns the `nft` invocations (`[store.nftables]`). Bans are queued without waiting
//! (a bounded queue; a full one drops the update and says so) and a task applies
//! what is queued in one `nft -f -` call. Each element carries the ban's remaining
//! time as its nftables timeout, so the kernel forgets it when the ban ends even if
//! xmppwall is not running then. It must not sit on any connection's path.

use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{info, warn};
use xmppwall_store::IpNet;

/// Updates waiting for `nft`, at most.
const QUEUE: usize = 4096;

/// `[store.nftables]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftablesConfig {
    /// The table's family (`inet` covers IPv4 and IPv6).
    pub family: String,
    pub table: String,
    /// The sets of banned IPv4 and IPv6 networks.
    pub set_v4: String,
    pub set_v6: String,
    /// Create the table, the sets and an input chain that drops their addresses.
    pub create: bool,
    /// Run `nft` inside this network namespace (`ip netns exec NAME nft ...`).
    pub netns: Option<String>,
    /// The `nft` program.
    pub nft: String,
}

impl Default for NftablesConfig {
    fn default() -> Self {
        NftablesConfig {
            family: "inet".into(),
            table: "xmppwall".into(),
            set_v4: "banned4".into(),
            set_v6: "banned6".into(),
            create: true,
            netns: None,
            nft: "nft".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Update {
    /// With the ban's remaining time, or `None` for a ban until lifted.
    Ban(IpNet, Option<Duration>),
    Unban(IpNet),
}

/// The handle bans are sent to; cheap to clone.
#[derive(Debug, Clone)]
pub struct Nftables {
    tx: mpsc::Sender<Update>,
}

impl Nftables {
    /// Creates the table and sets (with `create`) and starts the task that applies
    /// updates. Within a tokio runtime.
    pub fn start(config: NftablesConfig) -> Nftables {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(config, rx));
        Nftables { tx }
    }

    /// Adds `network` to its set until `until`.
    pub fn ban(&self, network: IpNet, until: SystemTime) {
        let Ok(left) = until.duration_since(SystemTime::now()) else {
            return;
        };
        self.send(Update::Ban(network, Some(left)));
    }

    /// Adds `network` to its set with no timeout (an operator's ban until lifted).
    pub fn ban_until_lifted(&self, network: IpNet) {
        self.send(Update::Ban(network, None));
    }

    /// Removes `network` from its set.
    pub fn unban(&self, network: IpNet) {
        self.send(Update::Unban(network));
    }

    fn send(&self, update: Update) {
        if self.tx.try_send(update).is_err() {
            warn!("the nftables queue is full; a ban update is not exported");
        }
    }
}

/// The table, both sets and the dropping chain (idempotent: `add` of something that
/// exists is no error, and the chain is flushed before its rules are added).
fn setup_script(c: &NftablesConfig) -> String {
    let (f, t) = (&c.family, &c.table);
    let mut script = format!(
        "add table {f} {t}\n\
         add set {f} {t} {v4} {{ type ipv4_addr; flags interval, timeout; }}\n\
         add set {f} {t} {v6} {{ type ipv6_addr; flags interval, timeout; }}\n",
        v4 = c.set_v4,
        v6 = c.set_v6
    );
    if c.create {
        script.push_str(&format!(
            "add chain {f} {t} input {{ type filter hook input priority -10; policy accept; }}\n\
             flush chain {f} {t} input\n\
             add rule {f} {t} input ip saddr @{v4} drop\n\
             add rule {f} {t} input ip6 saddr @{v6} drop\n",
            v4 = c.set_v4,
            v6 = c.set_v6
        ));
    }
    script
}

/// An element as nft writes it: a single address without its prefix length.
fn element(network: IpNet) -> String {
    if network.prefix_len() == network.max_prefix_len() {
        network.addr().to_string()
    } else {
        network.trunc().to_string()
    }
}

/// One `nft` script line per update.
fn update_script(c: &NftablesConfig, updates: &[Update]) -> String {
    let mut script = String::new();
    for update in updates {
        let network = match update {
            Update::Ban(n, _) | Update::Unban(n) => *n,
        };
        let set = match network {
            IpNet::V4(_) => &c.set_v4,
            IpNet::V6(_) => &c.set_v6,
        };
        let prefix = format!("{} {} {set}", c.family, c.table);
        match update {
            Update::Ban(_, left) => {
                // Re-adding an element does not renew its timeout: delete it first
                // (`destroy` is not in every nft release, so a harmless create+delete).
                // An element without a timeout stays until deleted.
                let timeout = left
                    .map(|left| {
                        let secs = left.as_secs().max(1) + u64::from(left.subsec_nanos() > 0);
                        format!(" timeout {secs}s")
                    })
                    .unwrap_or_default();
                let e = element(network);
                script.push_str(&format!(
                    "add element {prefix} {{ {e} timeout 1s }}\n\
                     delete element {prefix} {{ {e} }}\n\
                     add element {prefix} {{ {e}{timeout} }}\n"
                ));
            }
            Update::Unban(_) => {
                let e = element(network);
                script.push_str(&format!(
                    "add element {prefix} {{ {e} timeout 1s }}\n\
                     delete element {prefix} {{ {e} }}\n"
                ));
            }
        }
    }
    script
}

async fn apply(c: &NftablesConfig, script: &str) -> Result<(), String> {
    let mut command = match &c.netns {
        Some(ns) => {
            let mut cmd = tokio::process::Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(&c.nft);
            cmd
        }
        None => tokio::process::Command::new(&c.nft),
    };
    command
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", c.nft))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .map_err(|_| "nft did not finish within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

async fn run(config: NftablesConfig, mut rx: mpsc::Receiver<Update>) {
    match apply(&config, &setup_script(&config)).await {
        Ok(()) => info!(
            table = %config.table,
            set_v4 = %config.set_v4,
            set_v6 = %config.set_v6,
            "exporting address bans to nftables"
        ),
        Err(e) => {
            warn!(error = %e, "cannot set up the nftables table and sets; bans are exported all the same, check the ruleset")
        }
    }
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 512 {
                break;
            }
        }
        // A batch is one transaction: if nft refuses it (an element overlapping
        // another, say), each update is tried alone so the others still land.
        if apply(&config, &update_script(&config, &batch))
            .await
            .is_err()
        {
            for update in &batch {
                if let Err(e) = apply(
                    &config,
                    &update_script(&config, std::slice::from_ref(update)),
                )
                .await
                {
                    warn!(error = %e, update = ?update, "nft refused a ban update");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ban_replaces_the_element_with_the_remaining_time_as_timeout() {
        let c = NftablesConfig::default();
        let script = update_script(
            &c,
            &[
                Update::Ban(
                    "192.0.2.7/32".parse().unwrap(),
                    Some(Duration::from_millis(599_500)),
                ),
                Update::Ban(
                    "2001:db8::/64".parse().unwrap(),
                    Some(Duration::from_secs(60)),
                ),
                Update::Unban("198.51.100.0/24".parse().unwrap()),
                Update::Ban("203.0.113.0/24".parse().unwrap(), None),
            ],
        );
        assert_eq!(
            script,
            "add element inet xmppwall banned4 { 192.0.2.7 timeout 1s }\n\
             delete element inet xmppwall banned4 { 192.0.2.7 }\n\
             add element inet xmppwall banned4 { 192.0.2.7 timeout 600s }\n\
             add element inet xmppwall banned6 { 2001:db8::/64 timeout 1s }\n\
             delete element inet xmppwall banned6 { 2001:db8::/64 }\n\
             add element inet xmppwall banned6 { 2001:db8::/64 timeout 60s }\n\
             add element inet xmppwall banned4 { 198.51.100.0/24 timeout 1s }\n\
             delete element inet xmppwall banned4 { 198.51.100.0/24 }\n\
             add element inet xmppwall banned4 { 203.0.113.0/24 timeout 1s }\n\
             delete element inet xmppwall banned4 { 203.0.113.0/24 }\n\
             add element inet xmppwall banned4 { 203.0.113.0/24 }\n"
        );
    }

    #[test]
    fn setup_creates_sets_and_a_dropping_chain_only_when_asked() {
        let mut c = NftablesConfig::default();
        let full = setup_script(&c);
        assert!(full.contains(
            "add set inet xmppwall banned4 { type ipv4_addr; flags interval, timeout; }"
        ));
        assert!(full.contains("add rule inet xmppwall input ip saddr @banned4 drop"));
        c.create = false;
        let sets_only = setup_script(&c);
        assert!(sets_only.contains("add set inet xmppwall banned6"));
        assert!(!sets_only.contains("chain"));
    }
}

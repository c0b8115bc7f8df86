//! Block lists whose entries change while xmppwall runs: real-time block lists
//! (RTBL) followed over XEP-0060 publish-subscribe.
//!
//! A [`BlockList`] is filled by whoever follows the list (the proxy's RTBL client)
//! and read by rule conditions (`from = "list:NAME"`, `from_domain = "list:NAME"`)
//! and the federation filter. Entries are what the xmppbl.org lists publish as item
//! ids: a domain, a bare JID, or the hex SHA-256 of a bare JID (the form of the
//! `muc_bans_sha256` node, where the item id is the hash and the payload is unused).
//! This module owns the sets and the name registry; it does no I/O.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rustc_hash::FxHashSet;
use sha2::{Digest, Sha256};

/// Entries a list may hold at most: a list that publishes more is cut (and counted).
pub const MAX_ENTRIES: usize = 1_000_000;

#[derive(Debug, Default)]
struct Entries {
    /// Domains and bare JIDs in the clear, lowercased.
    plain: FxHashSet<String>,
    /// SHA-256 digests of bare JIDs (or domains).
    hashed: FxHashSet<[u8; 32]>,
}

/// One dynamic list.
#[derive(Debug, Default)]
pub struct BlockList {
    entries: RwLock<Entries>,
    /// Entries refused because the list was full.
    refused: AtomicU64,
}

impl BlockList {
    /// Whether the bare JID (lowercased), its domain or a parent domain is listed,
    /// in the clear or hashed.
    pub fn contains_jid(&self, bare: &str) -> bool {
        let e = self.read();
        if e.plain.is_empty() && e.hashed.is_empty() {
            return false;
        }
        if e.plain.contains(bare) || (!e.hashed.is_empty() && e.hashed.contains(&digest(bare))) {
            return true;
        }
        let domain = bare.rsplit_once('@').map_or(bare, |(_, d)| d);
        domain_listed(&e, domain)
    }

    /// Whether the domain or a parent domain is listed.
    pub fn contains_domain(&self, domain: &str) -> bool {
        let e = self.read();
        domain_listed(&e, domain)
    }

    /// Adds one item id; returns whether it was new.
    pub fn insert(&self, id: &str) -> bool {
        let Some(entry) = Entry::parse(id) else {
            return false;
        };
        let mut e = self.write();
        if e.plain.len() + e.hashed.len() >= MAX_ENTRIES {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match entry {
            Entry::Plain(p) => e.plain.insert(p),
            Entry::Hashed(h) => e.hashed.insert(h),
        }
    }

    /// Removes one item id; returns whether it was there.
    pub fn remove(&self, id: &str) -> bool {
        let Some(entry) = Entry::parse(id) else {
            return false;
        };
        let mut e = self.write();
        match entry {
            Entry::Plain(p) => e.plain.remove(&p),
            Entry::Hashed(h) => e.hashed.remove(&h),
        }
    }

    /// Replaces every entry (a full fetch of the node's items).
    pub fn replace_all<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut fresh = Entries::default();
        for id in ids {
            if fresh.plain.len() + fresh.hashed.len() >= MAX_ENTRIES {
                self.refused.fetch_add(1, Ordering::Relaxed);
                break;
            }
            match Entry::parse(id) {
                Some(Entry::Plain(p)) => {
                    fresh.plain.insert(p);
                }
                Some(Entry::Hashed(h)) => {
                    fresh.hashed.insert(h);
                }
                None => {}
            }
        }
        *self.write() = fresh;
    }

    pub fn clear(&self) {
        *self.write() = Entries::default();
    }

    pub fn len(&self) -> usize {
        let e = self.read();
        e.plain.len() + e.hashed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries refused because the list was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Entries> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Entries> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn domain_listed(e: &Entries, domain: &str) -> bool {
    let mut rest = domain.trim_end_matches('.');
    loop {
        if e.plain.contains(rest) || (!e.hashed.is_empty() && e.hashed.contains(&digest(rest))) {
            return true;
        }
        match rest.split_once('.') {
            Some((_, parent)) if !parent.is_empty() => rest = parent,
            _ => return false,
        }
    }
}

enum Entry {
    Plain(String),
    Hashed([u8; 32]),
}

impl Entry {
    /// An item id: 64 hex digits are a SHA-256 digest, anything else a domain or a
    /// JID in the clear (a resource is cut off).
    fn parse(id: &str) -> Option<Entry> {
        let id = id.trim();
        if id.is_empty() {
            return None;
        }
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut out = [0u8; 32];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&id[2 * i..2 * i + 2], 16).ok()?;
            }
            return Some(Entry::Hashed(out));
        }
        Some(Entry::Plain(crate::stanza::bare_jid(id)))
    }
}

/// Every dynamic list by name, for the life of the process: the lists outlive
/// reloads (the followers keep filling the same sets) and the rules of each
/// configuration refer to them by name.
fn registry() -> &'static Mutex<HashMap<String, Arc<BlockList>>> {
    static REGISTRY: std::sync::OnceLock<Mutex<HashMap<String, Arc<BlockList>>>> =
        std::sync::OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The list named `name`, created empty if it is new.
pub fn declare(name: &str) -> Arc<BlockList> {
    let mut r = registry().lock().unwrap_or_else(|p| p.into_inner());
    r.entry(name.to_owned()).or_default().clone()
}

/// The list named `name`, if one was declared.
pub fn lookup(name: &str) -> Option<Arc<BlockList>> {
    let r = registry().lock().unwrap_or_else(|p| p.into_inner());
    r.get(name).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: [u8; 32]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hashed_ids_match_the_bare_jid_and_plain_ids_match_domains_and_subdomains() {
        let list = BlockList::default();
        assert!(list.insert(&hex(digest("spammer@example.org"))));
        assert!(list.insert("spam.example"));
        assert!(list.contains_jid("spammer@example.org"));
        assert!(!list.contains_jid("friend@example.org"));
        assert!(list.contains_jid("anyone@spam.example"));
        assert!(list.contains_jid("anyone@muc.spam.example"));
        assert!(list.contains_domain("spam.example"));
        assert!(!list.contains_domain("notspam.example"));
        assert!(list.remove("spam.example"));
        assert!(!list.contains_jid("anyone@spam.example"));
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn a_full_fetch_replaces_everything() {
        let list = BlockList::default();
        list.insert("old.example");
        list.replace_all(["new.example", "bot@x.example"]);
        assert!(!list.contains_domain("old.example"));
        assert!(list.contains_domain("new.example"));
        assert!(list.contains_jid("bot@x.example"));
        assert!(!list.contains_jid("other@x.example"));
    }

    #[test]
    fn declared_lists_are_shared_by_name() {
        let a = declare("test-shared-list");
        a.insert("shared.example");
        assert!(lookup("test-shared-list")
            .expect("declared")
            .contains_domain("shared.example"));
        assert!(lookup("test-never-declared").is_none());
    }
}

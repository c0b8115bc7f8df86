//! The contacts xmppwall has seen for each account: the roster the server sent (the
//! result and pushes, RFC 6121 §2.1) and whom the user wrote to, shared by all the
//! account's streams and forgotten when its last stream ends.
//!
//! What `stranger` conditions and `[strangers]` read. An account's contacts are
//! unknown (`None`) until one of its streams has received a roster: a stranger is
//! never guessed. Bounded: at most [`ContactBook::ACCOUNTS`] accounts (the least
//! recently used one is forgotten first, its streams then know no contacts) and
//! [`ContactBook::PER_ACCOUNT`] contacts each.

use std::sync::Mutex;

use crate::table::BoundedTable;

#[derive(Debug)]
struct Account {
    /// Streams of the account that joined.
    streams: u32,
    /// `None` until a roster was seen.
    contacts: Option<BoundedTable<String, ()>>,
}

#[derive(Debug)]
pub struct ContactBook {
    accounts: Mutex<BoundedTable<String, Account>>,
}

impl Default for ContactBook {
    fn default() -> Self {
        ContactBook::new(ContactBook::ACCOUNTS)
    }
}

impl ContactBook {
    pub const ACCOUNTS: usize = 100_000;
    pub const PER_ACCOUNT: usize = 10_000;
    /// The longest bare JID kept: a localpart and a domainpart of 1023 bytes each
    /// (RFC 7622 §3.2, §3.3). Longer is no JID, and would only cost memory.
    pub const MAX_JID_BYTES: usize = 1023 + 1 + 1023;

    pub fn new(accounts: usize) -> ContactBook {
        ContactBook {
            accounts: Mutex::new(BoundedTable::new("contact-books", accounts)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BoundedTable<String, Account>> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stream of `account` starts using the book.
    pub fn join(&self, account: &str) {
        let mut t = self.lock();
        t.entry_ref(&account.to_owned(), || Account {
            streams: 0,
            contacts: None,
        })
        .streams += 1;
    }

    /// A stream of `account` ended; the last one takes the account's contacts with it.
    pub fn leave(&self, account: &str) {
        let mut t = self.lock();
        let key = account.to_owned();
        let Some(a) = t.get_mut(&key) else {
            return;
        };
        a.streams = a.streams.saturating_sub(1);
        if a.streams == 0 {
            t.remove(&key);
        }
    }

    /// A roster result or push: `(jid, removed)` for each item.
    pub fn roster<'a>(&self, account: &str, items: impl IntoIterator<Item = (&'a str, bool)>) {
        let mut t = self.lock();
        let Some(a) = t.get_mut(&account.to_owned()) else {
            return;
        };
        let contacts = a
            .contacts
            .get_or_insert_with(|| BoundedTable::new("contacts", Self::PER_ACCOUNT));
        for (jid, removed) in items {
            if jid.len() > Self::MAX_JID_BYTES {
                continue;
            }
            if removed {
                contacts.remove(&jid.to_owned());
            } else {
                contacts.entry(jid.to_owned(), || ());
            }
        }
    }

    /// The user wrote to `jid` (a bare JID): a contact from now on, once a roster
    /// was seen.
    pub fn wrote_to(&self, account: &str, jid: &str) {
        self.wrote_to_with(account, || jid.to_owned());
    }

    /// Like [`Self::wrote_to`] for the hot path (every message a user sends): the
    /// account is looked up without a copy, and `jid` (the bare JID, which costs a
    /// lowercased copy) is made only when the account's contacts are being kept.
    pub fn wrote_to_with(&self, account: &str, jid: impl FnOnce() -> String) {
        let mut t = self.lock();
        if let Some(contacts) = t.get_mut(account).and_then(|a| a.contacts.as_mut()) {
            let jid = jid();
            if jid.len() <= Self::MAX_JID_BYTES {
                contacts.entry(jid, || ());
            }
        }
    }

    /// Whether a roster was seen for `account`.
    pub fn known(&self, account: &str) -> bool {
        self.lock()
            .peek(account)
            .is_some_and(|a| a.contacts.is_some())
    }

    /// Whether `jid` (a bare JID) is a contact of `account`; `None` while no roster
    /// was seen.
    pub fn contains(&self, account: &str, jid: &str) -> Option<bool> {
        let t = self.lock();
        let contacts = t.peek(&account.to_owned())?.contacts.as_ref()?;
        Some(contacts.peek(&jid.to_owned()).is_some())
    }

    /// Accounts whose contacts are kept now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_are_shared_by_streams_and_forgotten_with_the_last() {
        let book = ContactBook::default();
        book.join("alice@example.org");
        assert_eq!(book.contains("alice@example.org", "bob@example.org"), None);
        book.roster("alice@example.org", [("bob@example.org", false)]);
        // A second stream of the account sees what the first one saw.
        book.join("alice@example.org");
        assert_eq!(
            book.contains("alice@example.org", "bob@example.org"),
            Some(true)
        );
        book.wrote_to("alice@example.org", "carol@example.net");
        assert_eq!(
            book.contains("alice@example.org", "carol@example.net"),
            Some(true)
        );
        book.roster("alice@example.org", [("bob@example.org", true)]);
        assert_eq!(
            book.contains("alice@example.org", "bob@example.org"),
            Some(false)
        );
        book.leave("alice@example.org");
        assert!(book.known("alice@example.org"));
        book.leave("alice@example.org");
        assert!(!book.known("alice@example.org"));
        assert!(book.is_empty());
    }

    #[test]
    fn what_is_longer_than_any_jid_is_not_kept() {
        let book = ContactBook::default();
        book.join("alice@example.org");
        let long = format!("{}@example.org", "a".repeat(4000));
        book.roster("alice@example.org", [(long.as_str(), false)]);
        book.wrote_to("alice@example.org", &long);
        assert_eq!(book.contains("alice@example.org", &long), Some(false));
        let longest = format!("{}@{}", "a".repeat(1023), "d".repeat(1023));
        book.wrote_to("alice@example.org", &longest);
        assert_eq!(book.contains("alice@example.org", &longest), Some(true));
    }
}

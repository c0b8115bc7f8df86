//! The registry of live streams of every front: who is connected, what they sent,
//! and the control channel to end one stream with a chosen stream error.
//!
//! Owns one [`LiveSession`] per relayed connection (a client on `c2s`; a remote
//! server on `s2s`; one of the server's own outgoing streams on `s2s-egress`; an
//! external component on `component`), registered when the relay starts
//! and removed when the connection task ends ([`Registration`]'s drop). The relay
//! updates counters with relaxed atomic adds once per read, never under a lock; the
//! registry's lock is taken only to register, unregister and list. It must not
//! decide anything: kicks come from the admin API, the relay carries them out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::stream_error::StreamError;

/// One live stream.
///
/// On the peer fronts "client" means the far side xmppwall relays for (the remote
/// server, the component); "server" the server behind xmppwall.
#[derive(Debug)]
pub struct LiveSession {
    pub id: u64,
    /// The address that connected to xmppwall (on `s2s-egress`: the server's own).
    pub peer: SocketAddr,
    /// `c2s`, `s2s`, `s2s-egress` or `component`.
    pub front: &'static str,
    /// The stream header's `to` (on `s2s-egress`: the remote domain).
    pub to: Option<String>,
    pub started: SystemTime,
    /// The account, once SASL succeeded (bare JID), then the full JID once bound.
    jid: Mutex<Option<String>>,
    /// Set once a JID is known, so the relay checks without locking.
    jid_known: OnceLock<()>,
    /// The peer domains of a server-to-server or component stream: the remote
    /// domains authenticated on it (`s2s`, `s2s-egress`), the component's domain.
    domains: Mutex<Vec<String>>,
    pub bytes_from_client: AtomicU64,
    pub bytes_to_client: AtomicU64,
    pub stanzas_from_client: AtomicU64,
    pub stanzas_to_client: AtomicU64,
    kick: watch::Sender<Option<StreamError>>,
}

impl LiveSession {
    pub fn jid(&self) -> Option<String> {
        self.jid.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the full JID is known (no lock).
    pub fn has_full_jid(&self) -> bool {
        self.jid_known.get().is_some()
    }

    /// Records the account (bare JID) or, with `full`, the bound JID.
    pub fn set_jid(&self, jid: &str, full: bool) {
        *self.jid.lock().unwrap_or_else(|p| p.into_inner()) = Some(jid.to_owned());
        if full {
            let _ = self.jid_known.set(());
        }
    }

    /// The peer domains (see the field); empty on `c2s`.
    pub fn domains(&self) -> Vec<String> {
        self.domains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the peer domains (once per change, never per stanza).
    pub fn set_domains(&self, domains: Vec<String>) {
        *self.domains.lock().unwrap_or_else(|p| p.into_inner()) = domains;
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Asks the relay to end the stream with `error`; `false` if it already ended.
    pub fn kick(&self, error: StreamError) -> bool {
        self.kick.send(Some(error)).is_ok()
    }
}

/// The live sessions of this instance.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<u64, Arc<LiveSession>>>,
}

/// Removes its session from the registry when dropped.
pub struct Registration<'a> {
    registry: &'a Registry,
    pub session: Arc<LiveSession>,
    /// Changes to `Some(error)` when the session is kicked.
    pub kicked: watch::Receiver<Option<StreamError>>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.session.id);
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<LiveSession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(
        &self,
        id: u64,
        peer: SocketAddr,
        front: &'static str,
        to: Option<String>,
    ) -> Registration<'_> {
        let (kick, kicked) = watch::channel(None);
        let session = Arc::new(LiveSession {
            id,
            peer,
            front,
            to,
            started: SystemTime::now(),
            jid: Mutex::new(None),
            jid_known: OnceLock::new(),
            domains: Mutex::new(Vec::new()),
            bytes_from_client: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            stanzas_from_client: AtomicU64::new(0),
            stanzas_to_client: AtomicU64::new(0),
            kick,
        });
        self.lock().insert(id, session.clone());
        Registration {
            registry: self,
            session,
            kicked,
        }
    }

    /// Every live session, by id.
    pub fn list(&self) -> Vec<Arc<LiveSession>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by_key(|s| s.id);
        all
    }

    pub fn get(&self, id: u64) -> Option<Arc<LiveSession>> {
        self.lock().get(&id).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Live sessions on `front` (a front's name).
    pub fn count_front(&self, front: &str) -> usize {
        self.lock().values().filter(|s| s.front == front).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

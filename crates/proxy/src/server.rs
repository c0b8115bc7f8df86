//! The running proxy: listeners, the state every connection shares, reload, and
//! graceful shutdown.
//!
//! Owns the lifetime of sockets and connection tasks. A reload swaps the
//! configuration snapshot and certificates atomically; connections already open
//! keep the snapshot they started with. Shutdown stops accepting, tells every open
//! stream `<system-shutdown/>` (RFC 6120 §4.9.3.22), and waits a bounded time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};
use xmppwall_policy::bans::{address_banned_error, Bans};
use xmppwall_policy::limiter::banned_error;
use xmppwall_policy::rules::Hook;
use xmppwall_policy::rules::Policy;
use xmppwall_policy::{GateDecision, Limiter};
use xmppwall_store::{
    Ban, Cluster, ClusterEvent, ClusterTicket, SharedRefusal, StanzaSummary, Store, StoreConfig,
    VerdictRecord, VerdictSource,
};

use crate::c2s;
use crate::config::{Config, Front, Listener};
use crate::stats::Stats;
use crate::tls::{self, CertStore, TlsError};

/// TLS towards the server, when configured.
pub type UpstreamTlsConfig = Option<(Arc<ClientConfig>, ServerName<'static>)>;

/// What every connection task can reach.
pub struct Shared {
    pub config: ArcSwap<Config>,
    /// XEP-0205 limits; a reload swaps the configuration and keeps the counters.
    pub limiter: Arc<ArcSwap<Limiter>>,
    /// The operator's rules; a reload applies to open streams at their next stanza.
    pub policy: Arc<ArcSwap<Policy>>,
    pub certs: CertStore,
    pub upstream_tls: ArcSwap<UpstreamTlsConfig>,
    /// How remote servers' certificates are checked (`[s2s]`), swapped on reload.
    pub s2s_tls: ArcSwap<tls::S2sTls>,
    /// The egress's DNS resolver (`[s2s] resolver`), with its cache.
    pub resolver: crate::dns::ResolverSlot,
    pub stats: Stats,
    /// The live client streams (for the admin API: list, kick).
    pub sessions: crate::sessions::Registry,
    /// The operator's bans on addresses, prefixes, accounts and domains.
    pub bans: Arc<Bans>,
    /// The stanza recording, when `[record] path` is set (fixed until restart).
    pub recorder: std::sync::OnceLock<Arc<crate::recorder::Recorder>>,
    /// Durable bans, reports, reputation and the audit trail (`[store]`).
    pub store: Store,
    /// State shared with other instances through Redis (`[store] shared = "redis"`),
    /// once [`Shared::join_cluster`] ran.
    pub cluster: Arc<std::sync::OnceLock<Cluster>>,
    /// The nftables set address bans are exported to (`[store.nftables]`), once
    /// [`serve`] started it.
    pub nftables: Arc<std::sync::OnceLock<crate::nftables::Nftables>>,
    /// The server's stream features per domain, answered before connecting.
    pub feature_templates: crate::c2s::FeatureTemplates,
    /// One reload at a time (SIGHUP, a list file's change, the admin API).
    reloading: std::sync::Mutex<()>,
    shutdown: watch::Sender<bool>,
    next_id: AtomicU64,
}

impl Shared {
    /// Shared state over an in-memory store (nothing outlives the process; for
    /// `xmppwall check` and tests). `run` uses [`Shared::with_store`].
    pub fn new(config: Config) -> Result<Arc<Shared>, TlsError> {
        #[allow(clippy::expect_used)]
        let store = Store::open(&StoreConfig::in_memory())
            .expect("an in-memory SQLite database opens unless memory is exhausted");
        Shared::with_store(config, store)
    }

    /// Shared state whose bans (those the limits and rules make) go to `store`.
    pub fn with_store(config: Config, store: Store) -> Result<Arc<Shared>, TlsError> {
        let certs = CertStore::load(&config.tls)?;
        let upstream_tls = upstream_tls(&config)?;
        let s2s_tls = tls::s2s_tls(&config.s2s)?;
        let limiter =
            Limiter::new(config.policy_limits.clone()).with_antispam(config.antispam.clone());
        let sink = store.clone();
        let cluster = Arc::new(std::sync::OnceLock::<Cluster>::new());
        crate::durable::attach(&limiter, &store, &cluster);
        let shared_sink = cluster.clone();
        let nftables = Arc::new(std::sync::OnceLock::<crate::nftables::Nftables>::new());
        let kernel_sink = nftables.clone();
        limiter.state.observe_bans(Box::new(move |ban| {
            sink.submit_ban(Ban::new(
                ban.network,
                std::time::SystemTime::now(),
                ban.until,
                ban.source.clone(),
                ban.reason.clone(),
            ));
            if let Some(cluster) = shared_sink.get() {
                cluster.ban(ban.network, ban.until, &ban.source, &ban.reason);
            }
            if let Some(nft) = kernel_sink.get() {
                nft.ban(ban.network, ban.until);
            }
        }));
        Ok(Arc::new(Shared {
            store,
            cluster,
            nftables,
            limiter: Arc::new(ArcSwap::from_pointee(limiter)),
            policy: Arc::new(ArcSwap::new(config.policy.clone())),
            config: ArcSwap::from_pointee(config),
            certs,
            upstream_tls: ArcSwap::from_pointee(upstream_tls),
            s2s_tls: ArcSwap::from_pointee(s2s_tls),
            resolver: crate::dns::ResolverSlot::default(),
            stats: Stats::default(),
            sessions: crate::sessions::Registry::default(),
            bans: Arc::new(Bans::default()),
            recorder: std::sync::OnceLock::new(),
            feature_templates: crate::c2s::FeatureTemplates::default(),
            reloading: std::sync::Mutex::new(()),
            shutdown: watch::channel(false).0,
            next_id: AtomicU64::new(1),
        }))
    }

    /// A receiver that changes to `true` once shutdown begins.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn connection_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues an audit record of a verdict on a connection as a whole (the gate, the
    /// connect chain, an authentication-failure ban): no stanza, no JID.
    pub fn audit_refusal(
        &self,
        ip: std::net::IpAddr,
        hook: Hook,
        source: VerdictSource,
        name: &str,
        action: &str,
    ) {
        self.store.record_verdict(VerdictRecord {
            at: std::time::SystemTime::now(),
            address: ip.to_canonical(),
            jid: None,
            hook: hook.chain_name().to_owned(),
            stanza: StanzaSummary::default(),
            source,
            name: name.to_owned(),
            action: action.to_owned(),
        });
    }

    /// Bans `ip`'s address group now, on every instance, durably (for the admin API):
    /// the gate refuses it at once, the store commits it before this returns, and
    /// the other instances hear of it through Redis when shared state is on.
    pub async fn ban(
        &self,
        ip: std::net::IpAddr,
        duration: std::time::Duration,
        source: &str,
        reason: &str,
    ) -> Result<std::time::SystemTime, xmppwall_store::StoreError> {
        let until = self.limiter.load().ban_address(
            ip,
            duration,
            std::time::Instant::now(),
            source,
            reason,
        );
        self.store.flush().await?;
        Ok(until)
    }

    /// Lifts the ban on `network`'s address group here, in the store and on the other
    /// instances; returns whether one was in force here.
    pub async fn unban(
        &self,
        network: xmppwall_store::IpNet,
    ) -> Result<bool, xmppwall_store::StoreError> {
        let limiter = self.limiter.load();
        let group = limiter.network_of(network.addr());
        let lifted = limiter.unban(network, std::time::Instant::now());
        let now = std::time::SystemTime::now();
        self.store.unban(network, now).await?;
        if group != network {
            self.store.unban(group, now).await?;
        }
        if let Some(cluster) = self.cluster.get() {
            cluster.unban(group);
        }
        if let Some(nft) = self.nftables.get() {
            nft.unban(group);
        }
        Ok(lifted)
    }

    /// Joins the other instances through Redis when `[store] shared = "redis"`: bans
    /// they make apply here and bans made here reach them. Within a tokio runtime;
    /// once per process.
    pub fn join_cluster(self: &Arc<Self>) {
        let Some(redis) = self.config.load().redis.clone() else {
            return;
        };
        if self.cluster.get().is_some() {
            return;
        }
        let (cluster, mut events) = match Cluster::start(redis) {
            Ok(started) => started,
            Err(e) => {
                warn!(error = %e, "shared state is off");
                return;
            }
        };
        info!(instance = cluster.instance(), "sharing state through Redis");
        let _ = self.cluster.set(cluster);
        self.share_rule_rates();
        let limiter = self.limiter.clone();
        let nftables = self.nftables.clone();
        let store = self.store.clone();
        // The tasks hold the proxy weakly: they end with it.
        let weak = Arc::downgrade(self);
        let ticker = weak.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(shared) = ticker.upgrade() else {
                    return;
                };
                shared.send_rule_rate_use();
            }
        });
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let limiter = limiter.load();
                match event {
                    ClusterEvent::OperatorBan { ban, kick } => {
                        if let Some(shared) = weak.upgrade() {
                            shared.operator_ban_from_cluster(ban, kick);
                        }
                    }
                    ClusterEvent::OperatorUnban { kind, target } => {
                        let (Some(shared), Ok(target)) = (
                            weak.upgrade(),
                            xmppwall_policy::bans::BanTarget::parse(&kind, &target),
                        ) else {
                            continue;
                        };
                        if shared.lift_operator_ban(&target) {
                            info!(kind, value = %target.value(), "operator ban lifted by another instance");
                        }
                    }
                    ClusterEvent::RatesUsed(used) => {
                        if let Some(shared) = weak.upgrade() {
                            shared.rule_rate_use_from_cluster(used);
                        }
                    }
                    ClusterEvent::Ban {
                        network,
                        until,
                        source,
                        ..
                    } => {
                        debug!(%network, source, "ban from another instance");
                        limiter.restore_ban(network, until, std::time::Instant::now());
                        if let Some(nft) = nftables.get() {
                            nft.ban(network, until);
                        }
                    }
                    ClusterEvent::Unban { network } => {
                        limiter.unban(network, std::time::Instant::now());
                        if let Some(nft) = nftables.get() {
                            nft.unban(network);
                        }
                    }
                    ClusterEvent::Report(report) => {
                        debug!(subject = report.subject, "report from another instance");
                        let store = store.clone();
                        tokio::spawn(async move {
                            if let Err(e) = store.add_report(report).await {
                                warn!(error = %e, "cannot store a report from another instance");
                            }
                        });
                    }
                    ClusterEvent::Reputation { subject, delta, at } => {
                        if let Some(config) = &limiter.antispam.reputation {
                            let age = std::time::SystemTime::now()
                                .duration_since(at)
                                .unwrap_or_default();
                            debug!(subject, delta, "reputation change from another instance");
                            limiter.state.antispam.reputation.apply_shared(
                                config,
                                &subject,
                                delta,
                                age,
                                std::time::Instant::now(),
                            );
                        }
                    }
                }
            }
        });
    }

    /// The shared gate for an admitted connection: `Ok(None)` without shared state.
    async fn shared_admission(
        &self,
        ip: std::net::IpAddr,
    ) -> Result<Option<ClusterTicket>, xmppwall_policy::LimitKind> {
        let Some(cluster) = self.cluster.get() else {
            return Ok(None);
        };
        let (network, max, attempts) = {
            let limiter = self.limiter.load();
            let gate = &limiter.config.gate;
            (
                limiter.network_of(ip),
                gate.max_connections_per_address,
                gate.connection_attempts.map(|p| (p.count, p.period)),
            )
        };
        match cluster.admit(network, max, attempts).await {
            Ok(ticket) => Ok(Some(ticket)),
            Err(SharedRefusal::Connections) => {
                Err(xmppwall_policy::LimitKind::ConnectionsPerAddress)
            }
            Err(SharedRefusal::Attempts) => Err(xmppwall_policy::LimitKind::ConnectionAttempts),
        }
    }

    /// Adds (or replaces) an operator's ban (admin API): in force at once (with
    /// `kick`, the live streams it covers are ended; their ids are returned),
    /// committed to the store before this returns, so it survives a restart, and
    /// shared with the other instances (Redis) and the kernel (nftables).
    pub async fn add_operator_ban(
        &self,
        ban: xmppwall_policy::bans::Ban,
        kick: bool,
    ) -> Result<Vec<u64>, String> {
        let kicked = self.apply_operator_ban(&ban, kick)?;
        let record = xmppwall_store::OperatorBan {
            kind: ban.target.kind().to_owned(),
            target: ban.target.value(),
            created: ban.created,
            until: ban.until,
            reason: ban.reason.clone(),
        };
        if let Some(cluster) = self.cluster.get() {
            cluster.operator_ban(&record, kick);
        }
        if let Err(e) = self.store.put_operator_ban(record).await {
            warn!(error = %e, "the ban is in force but could not be saved; it ends with this process");
        }
        Ok(kicked)
    }

    /// Puts an operator's ban in force here (the list, nftables for an address or
    /// prefix) and, with `kick`, ends the live streams it covers with the stream
    /// error a new connection or login would get; returns their ids.
    fn apply_operator_ban(
        &self,
        ban: &xmppwall_policy::bans::Ban,
        kick: bool,
    ) -> Result<Vec<u64>, String> {
        use xmppwall_policy::bans::{account_banned_error, address_banned_error, BanTarget};
        self.bans.add(ban.clone())?;
        if let (BanTarget::Address(net), Some(nft)) = (&ban.target, self.nftables.get()) {
            match ban.until {
                Some(until) => nft.ban(*net, until),
                None => nft.ban_until_lifted(*net),
            }
        }
        if !kick {
            return Ok(Vec::new());
        }
        let error = match &ban.target {
            BanTarget::Address(_) => address_banned_error(ban),
            BanTarget::Account(_) => account_banned_error(ban),
            // A domain's ban applies stanza by stanza; no stream ends for it.
            BanTarget::Domain(_) => return Ok(Vec::new()),
        };
        let covers = |s: &crate::sessions::LiveSession| match &ban.target {
            BanTarget::Address(net) => net.contains(&s.peer.ip().to_canonical()),
            BanTarget::Account(account) => s
                .jid()
                .is_some_and(|j| xmppwall_policy::stanza::bare_jid(&j) == *account),
            BanTarget::Domain(_) => false,
        };
        let mut kicked = Vec::new();
        for s in self.sessions.list() {
            if covers(&s) && s.kick(error.clone()) {
                kicked.push(s.id);
            }
        }
        if !kicked.is_empty() {
            info!(sessions = ?kicked, condition = error.condition.name(), "sessions kicked");
        }
        Ok(kicked)
    }

    /// Lifts an operator's ban here, in the store and on the other instances;
    /// `false` if there was none.
    pub async fn remove_operator_ban(&self, target: &xmppwall_policy::bans::BanTarget) -> bool {
        let removed = self.lift_operator_ban(target);
        if let Some(cluster) = self.cluster.get() {
            cluster.operator_unban(target.kind(), &target.value());
        }
        match self
            .store
            .remove_operator_ban(target.kind().to_owned(), target.value())
            .await
        {
            Ok(stored) => removed || stored,
            Err(e) => {
                warn!(error = %e, "the ban is lifted but the store could not forget it; it returns at the next start");
                removed
            }
        }
    }

    /// Lifts an operator's ban here (the list, nftables); `false` if there was none.
    fn lift_operator_ban(&self, target: &xmppwall_policy::bans::BanTarget) -> bool {
        let removed = self.bans.remove(target);
        if let (xmppwall_policy::bans::BanTarget::Address(net), Some(nft)) =
            (target, self.nftables.get())
        {
            nft.unban(*net);
        }
        removed
    }

    /// An operator's ban made through another instance: in force here at once (the
    /// same ban already in force changes nothing, so a reconnection's reload of the
    /// stored bans kicks nobody twice).
    fn operator_ban_from_cluster(&self, record: xmppwall_store::OperatorBan, kick: bool) {
        let target = match xmppwall_policy::bans::BanTarget::parse(&record.kind, &record.target) {
            Ok(t) => t,
            Err(e) => {
                warn!(kind = record.kind, target = record.target, error = %e, "an operator ban from another instance is not understood; skipped");
                return;
            }
        };
        // Redis keeps times to the millisecond.
        let ms = |t: Option<std::time::SystemTime>| {
            t.map(|t| {
                t.duration_since(std::time::SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
            })
        };
        if self
            .bans
            .list()
            .iter()
            .any(|b| b.target == target && ms(b.until) == ms(record.until))
        {
            return;
        }
        let ban = xmppwall_policy::bans::Ban {
            target,
            until: record.until,
            reason: record.reason,
            created: record.created,
        };
        info!(kind = ban.target.kind(), value = %ban.target.value(), "operator ban from another instance");
        if let Err(e) = self.apply_operator_ban(&ban, kick) {
            warn!(error = %e, "an operator ban from another instance is not applied");
        }
    }

    /// Counts rule rate limits for the other instances (shared state on), in the
    /// running policy; again after a reload swaps it.
    fn share_rule_rates(&self) {
        if self.cluster.get().is_some() {
            for (_, rate) in self.policy.load().rule_rates() {
                rate.share(true);
            }
        }
    }

    /// Hands what the rule rate limits admitted here since the last batch to the
    /// shared state (every second, off every connection's path).
    fn send_rule_rate_use(&self) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        let policy = self.policy.load();
        for (name, rate) in policy.rule_rates() {
            rate.share(true);
            let used = rate.take_used();
            cluster.share_rate_use(&name, rate.limit.count, rate.limit.period, used);
        }
    }

    /// Adds what the other instances' rule rate limits admitted to the buckets here.
    fn rule_rate_use_from_cluster(&self, used: Vec<(String, String, u64)>) {
        let policy = self.policy.load();
        let rates: std::collections::HashMap<String, &xmppwall_policy::rules::RuleRate> =
            policy.rule_rates().collect();
        let now = std::time::Instant::now();
        for (rule, key, n) in used {
            if let Some(rate) = rates.get(&rule) {
                debug!(rule, key, n, "rule rate use from other instances");
                rate.add_used(key, n, now);
            }
        }
    }

    /// Puts back what the store keeps across restarts (bans, reputation). `run` calls
    /// it before anything is served: the listeners and the admin API, so no client
    /// and no operator sees the state before it.
    pub async fn restore(self: &Arc<Self>) {
        if let Some(nft) = self.config.load().nftables.clone() {
            let _ = self.nftables.set(crate::nftables::Nftables::start(nft));
        }
        self.restore_bans().await;
        crate::durable::restore_reputation(&self.limiter.load(), &self.store).await;
    }

    /// Applies the bans the store holds (at start: bans outlive restarts).
    pub async fn restore_bans(&self) {
        let now = std::time::SystemTime::now();
        match self.store.active_bans(now).await {
            Ok(bans) => {
                let limiter = self.limiter.load();
                let instant = std::time::Instant::now();
                for ban in &bans {
                    limiter.restore_ban(ban.network, ban.expires, instant);
                    if let Some(nft) = self.nftables.get() {
                        nft.ban(limiter.network_of(ban.network.addr()), ban.expires);
                    }
                }
                if !bans.is_empty() {
                    info!(bans = bans.len(), "bans restored from the store");
                }
            }
            Err(e) => warn!(error = %e, "cannot read the stored bans; starting without them"),
        }
        match self.store.operator_bans(now).await {
            Ok(bans) => {
                let mut restored = 0;
                for b in bans {
                    match xmppwall_policy::bans::BanTarget::parse(&b.kind, &b.target) {
                        Ok(target) => {
                            let ban = xmppwall_policy::bans::Ban {
                                target,
                                until: b.until,
                                reason: b.reason,
                                created: b.created,
                            };
                            if self.apply_operator_ban(&ban, false).is_ok() {
                                restored += 1;
                            }
                        }
                        Err(e) => {
                            warn!(kind = b.kind, target = b.target, error = %e, "a stored operator ban is not understood; skipped")
                        }
                    }
                }
                if restored > 0 {
                    info!(bans = restored, "operator bans restored from the store");
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot read the stored operator bans; starting without them")
            }
        }
    }

    /// Applies a new configuration to new connections and reloads certificates.
    /// Listener addresses are fixed at start; a change to them is reported and
    /// needs a restart.
    pub fn reload(&self, mut config: Config) -> Result<(), TlsError> {
        let upstream = upstream_tls(&config)?;
        let s2s_tls = tls::s2s_tls(&config.s2s)?;
        self.certs.reload(&config.tls)?;
        self.s2s_tls.store(Arc::new(s2s_tls));
        let old = self.config.load();
        if old.listeners != config.listeners {
            warn!("listener changes take effect only after a restart");
        }
        if old.store != config.store || old.redis != config.redis || old.nftables != config.nftables
        {
            warn!("[store] changes take effect only after a restart");
        }
        if old.log != config.log {
            warn!("[log] changes take effect only after a restart (RUST_LOG too)");
        }
        if old.record != config.record {
            warn!(
                running = ?old.record,
                "[record] changes take effect only after a restart: the running recording goes on as it was"
            );
        }
        self.upstream_tls.store(Arc::new(upstream));
        if old.upstream != config.upstream {
            self.feature_templates.clear();
        }
        let limiter = self
            .limiter
            .load()
            .with_config(config.policy_limits.clone())
            .with_antispam(config.antispam.clone());
        self.limiter.store(Arc::new(limiter));
        // Rules still here keep their rate buckets and hit counts.
        match Arc::get_mut(&mut config.policy) {
            Some(policy) => policy.carry_over(&self.policy.load()),
            None => warn!("the new rules' rate limits start afresh"),
        }
        self.policy.store(config.policy.clone());
        self.share_rule_rates();
        self.config.store(Arc::new(config));
        Ok(())
    }
}

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file (or an included one) is invalid: every problem with FILE:LINE:COLUMN.
    #[error("{0}")]
    Invalid(crate::config::ConfigError),
    #[error("cannot load TLS certificates: {0}")]
    Tls(TlsError),
}

impl Shared {
    /// Reads the configuration file the running one came from (with its rules,
    /// lists and certificates) and swaps it in; on any problem nothing changes.
    /// SIGHUP and the admin API's reload both come here.
    ///
    /// It reads files and compiles rules and certificates: call it off the async
    /// workers (`spawn_blocking`). Reloads run one at a time.
    pub fn reload_from_file(&self) -> Result<std::path::PathBuf, ReloadError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.config.load().source.clone();
        let mut config = Config::load(&path).map_err(ReloadError::Invalid)?;
        let running = self.config.load();
        // The gate's address table and the bans in it are keyed by address group: a
        // new grouping would leave every entry under a key nothing looks up any more
        // (bans lifted, counts restarted). It takes a restart.
        let (gate, bound_gate) = (&mut config.policy_limits.gate, &running.policy_limits.gate);
        if (gate.ipv4_prefix, gate.ipv6_prefix) != (bound_gate.ipv4_prefix, bound_gate.ipv6_prefix)
        {
            warn!(
                ipv4_prefix = bound_gate.ipv4_prefix,
                ipv6_prefix = bound_gate.ipv6_prefix,
                "[gate] ipv4_prefix and ipv6_prefix changes take effect only after a restart"
            );
            gate.ipv4_prefix = bound_gate.ipv4_prefix;
            gate.ipv6_prefix = bound_gate.ipv6_prefix;
        }
        if let (Some(new), Some(bound)) = (config.admin.as_mut(), running.admin.as_ref()) {
            // The API goes on serving the address it is bound to (a new one takes a
            // restart), and that address decides whether a token is needed.
            if new.listen != bound.listen {
                warn!(bound = %bound.listen, "[admin] listen changes take effect only after a restart");
                new.listen = bound.listen;
            }
            if new.token.is_none() && !bound.listen.ip().is_loopback() {
                return Err(ReloadError::Invalid(crate::config::ConfigError {
                    problems: vec![crate::config::Problem {
                        line: section_line(&path, "[admin]"),
                        column: 1,
                        file: path,
                        message: format!(
                            "the admin API listens on {}, not a loopback address, and keeps doing so until a restart: it needs a token; keep token or token_file",
                            bound.listen
                        ),
                    }],
                }));
            }
        }
        self.reload(config).map_err(ReloadError::Tls)?;
        Ok(path)
    }
}

/// The line of `header` (a table header such as `[admin]`) in the file at `path`,
/// for a problem found after parsing; 1 when it cannot be found.
fn section_line(path: &std::path::Path, header: &str) -> usize {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.lines().position(|l| l.trim() == header))
        .map_or(1, |i| i + 1)
}

fn upstream_tls(config: &Config) -> Result<UpstreamTlsConfig, TlsError> {
    config
        .upstream
        .tls
        .as_ref()
        .map(tls::upstream_config)
        .transpose()
}

/// Binds every configured listener. Fails before anything is served if one
/// address cannot be bound.
pub async fn bind(config: &Config) -> std::io::Result<Vec<(Listener, TcpListener)>> {
    let mut bound = Vec::new();
    for l in &config.listeners {
        let socket = match l.address {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(l.address).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", l.address))
        })?;
        bound.push((l.clone(), socket.listen(1024)?));
    }
    Ok(bound)
}

/// Accepts connections on one listener until shutdown: the gate first (XEP-0205
/// §2.1, §2.2), then a task per admitted connection, kept in `tracker`.
async fn accept_loop(
    shared: Arc<Shared>,
    listener: Listener,
    socket: Arc<TcpListener>,
    tracker: TaskTracker,
) {
    let mut shutdown = shared.shutdown_signal();
    if *shutdown.borrow_and_update() {
        return;
    }
    loop {
        let accepted = tokio::select! {
            a = socket.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and similar: keep serving the open streams.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // XEP-0205 §2.1, §2.2: refused before a byte is read, at the TCP level.
        let admission = match shared
            .limiter
            .load()
            .admit(peer.ip(), std::time::Instant::now())
        {
            GateDecision::Refuse(limit) => {
                debug!(peer = %peer, limit = limit.name(), "connection refused at the gate");
                shared.audit_refusal(
                    peer.ip(),
                    Hook::Connect,
                    VerdictSource::Limit,
                    limit.name(),
                    "refuse",
                );
                shared
                    .stats
                    .ended(listener.front, crate::stats::Outcome::GateRefused);
                drop(tcp);
                continue;
            }
            // The operator's bans (admin API): the client is told, like a
            // banned address (RFC 6120 §4.9.3.18).
            GateDecision::Admit(ticket) => c2s::Admission {
                ticket,
                banned: shared
                    .bans
                    .address(peer.ip())
                    .map(|ban| address_banned_error(&ban)),
                cluster: None,
            },
            GateDecision::Banned(ticket, until) => {
                shared.audit_refusal(
                    peer.ip(),
                    Hook::Connect,
                    VerdictSource::Limit,
                    xmppwall_policy::LimitKind::BannedAddress.name(),
                    "close",
                );
                c2s::Admission {
                    ticket,
                    banned: Some(banned_error(until)),
                    cluster: None,
                }
            }
        };
        let id = shared.connection_id();
        let span = tracing::info_span!("conn", id, peer = %peer, front = ?listener.front);
        let shared = shared.clone();
        let listener = listener.clone();
        tracker.spawn(
            async move {
                let mut admission = admission;
                // The shared gate (several instances): one Redis round trip at most,
                // off the accept loop.
                if admission.banned.is_none() && !admission.ticket.trusted_address {
                    match Box::pin(shared.shared_admission(peer.ip())).await {
                        Ok(ticket) => admission.cluster = ticket,
                        Err(kind) => {
                            debug!(limit = kind.name(), "connection refused by the shared gate");
                            shared.limiter.load().state.hit(kind);
                            shared.audit_refusal(
                                peer.ip(),
                                Hook::Connect,
                                VerdictSource::Limit,
                                kind.name(),
                                "refuse",
                            );
                            drop(tcp);
                            return;
                        }
                    }
                }
                match listener.front {
                    // Each boxed: the task then holds only the future of its own
                    // front (sizes differ by kilobytes), not the largest of all.
                    Front::C2s => {
                        Box::pin(c2s::serve(shared, id, tcp, peer, listener, admission)).await
                    }
                    Front::S2s | Front::S2sEgress | Front::Component => {
                        Box::pin(crate::relay::serve(
                            shared, id, tcp, peer, listener, admission,
                        ))
                        .await
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// Serves until `stop` resolves, then shuts down gracefully.
pub async fn serve(
    shared: Arc<Shared>,
    listeners: Vec<(Listener, TcpListener)>,
    stop: impl std::future::Future<Output = ()>,
) {
    if let Some(path) = shared.config.load().record.clone() {
        match crate::recorder::Recorder::start(&path).await {
            Ok(r) => {
                info!(path = %path.display(), "recording stanzas");
                let _ = shared.recorder.set(r);
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot open the recording file; not recording")
            }
        }
    }
    // The store's state was restored before the listeners were bound (`restore`).
    shared.join_cluster();
    let tracker = TaskTracker::new();
    // Real-time block lists: followed from start to shutdown (changes need a restart).
    for rtbl in shared.config.load().rtbl.clone() {
        info!(list = %rtbl.name, service = %rtbl.service, node = %rtbl.node, "following block list");
        tracker.spawn(crate::rtbl::follow(shared.clone(), rtbl));
    }
    for (listener, socket) in listeners {
        let shared = shared.clone();
        let tracker2 = tracker.clone();
        let socket = Arc::new(socket);
        tracker.spawn(async move {
            info!(address = %listener.address, front = ?listener.front, tls = ?listener.tls, "listening");
            // The accept loop runs in a task of its own: should anything in it panic
            // (a bug), that costs one accepted connection, not the port.
            loop {
                let run = tokio::spawn(accept_loop(
                    shared.clone(),
                    listener.clone(),
                    socket.clone(),
                    tracker2.clone(),
                ));
                match run.await {
                    Err(e) if e.is_panic() && !*shared.shutdown_signal().borrow() => {
                        tracing::error!(address = %listener.address, "the accept loop failed; accepting again");
                    }
                    _ => break,
                }
            }
        });
    }
    stop.await;
    let grace = shared.config.load().timeouts.shutdown_grace;
    info!(open = shared.stats.open_connections(), "shutting down");
    shared.shutdown.send_replace(true);
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            open = shared.stats.open_connections(),
            "connections still open after the shutdown grace period; closing them"
        );
    }
}

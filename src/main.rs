//! The `xmppwall` command: run the proxy, check a configuration, replay a
//! recording, and administer a running instance (`ctl`).
#![forbid(unsafe_code)]

mod ctl;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};
use xmppwall_proxy::config::{Config, LogFormat};
use xmppwall_proxy::server;

/// mimalloc rather than the system allocator: under connection churn from many
/// addresses glibc's malloc kept freed per-connection memory around the long-lived
/// address-table entries (heap in use 6 MB, resident 160-240 MB after 40,000-60,000
/// connections from distinct addresses); see BENCHMARKS.md, "Allocator".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "xmppwall",
    version,
    about = "An XMPP application-layer firewall"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the firewall in the foreground.
    Run {
        /// The configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a configuration file and report every problem with file:line:column.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Evaluate the configuration's rules against a recording (`[record] path`) and
    /// print what each rule would have done. Sends nothing anywhere.
    Replay {
        /// A full configuration whose rules (and included rules files) to use.
        #[arg(
            short,
            long,
            required_unless_present = "rules",
            conflicts_with = "rules"
        )]
        config: Option<PathBuf>,
        /// A rules file alone (`[policy]`, `[lists.*]`, `[[rule]]`).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// A JSON Lines stanza recording.
        recording: PathBuf,
        /// Also print the verdict of every recorded stanza.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Administer a running xmppwall through its admin API (`[admin]`).
    Ctl(ctl::Ctl),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            // Certificates and keys are loaded too, as `run` would, so a key that does
            // not match its certificate is found before a restart, not after.
            Ok(mut loaded) => match server::Shared::new({
                // `check` writes nothing: a CA that `run` would make is only announced.
                if let Some(u) = &loaded.s2s.upstream_certificates {
                    if u.generate && !u.ca_cert.exists() && !u.ca_key.exists() {
                        println!(
                            "{}: the upstream CA will be made on first start: {} and {}",
                            config.display(),
                            u.ca_cert.display(),
                            u.ca_key.display()
                        );
                        loaded.s2s.upstream_certificates = None;
                    }
                }
                loaded
            }) {
                Ok(_) => {
                    println!("{}: OK", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Replay {
            config,
            rules,
            recording,
            verbose,
        } => match replay(config.as_deref(), rules.as_deref(), &recording, verbose) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xmppwall: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Ctl(c) => match ctl::run(c) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xmppwall ctl: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => match run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xmppwall: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn replay(
    config: Option<&std::path::Path>,
    rules: Option<&std::path::Path>,
    recording: &std::path::Path,
    verbose: bool,
) -> anyhow::Result<()> {
    let policy = match (config, rules) {
        (Some(config), _) => {
            Config::load(config)
                .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?
                .policy
        }
        (None, Some(rules)) => std::sync::Arc::new(
            Config::load_rules(rules).map_err(|e| anyhow::anyhow!("invalid rules:\n{e}"))?,
        ),
        (None, None) => anyhow::bail!("give --config FILE or --rules FILE"),
    };
    let text = std::fs::read_to_string(recording)
        .with_context(|| format!("cannot read the recording {}", recording.display()))?;
    let report = xmppwall_policy::recording::replay(&policy, &text);
    for (line, why) in &report.bad_lines {
        eprintln!("{}:{line}: skipped: {why}", recording.display());
    }
    if verbose {
        for (line, verdict, rule) in &report.verdicts {
            match rule {
                Some(rule) => println!("{}:{line}: {verdict} by {rule}", recording.display()),
                None => println!("{}:{line}: {verdict}", recording.display()),
            }
        }
        println!();
    }
    println!(
        "{:<40} {:>8} {:>8} {:>8}",
        "RULE", "DECIDED", "EFFECTS", "SHADOW"
    );
    for chain in &policy.chains {
        for rule in &chain.rules {
            let t = report.rules.get(&rule.name).cloned().unwrap_or_default();
            println!(
                "{:<40} {:>8} {:>8} {:>8}",
                format!("{}/{}", chain.name, rule.name),
                t.decided,
                t.matched_side_effects_only,
                t.shadow
            );
        }
    }
    let mut totals: std::collections::BTreeMap<&str, u64> = Default::default();
    for (_, verdict, _) in &report.verdicts {
        let kind = verdict.split('(').next().unwrap_or(verdict);
        *totals.entry(kind).or_default() += 1;
    }
    let totals: Vec<String> = totals.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("\n{} stanzas: {}", report.verdicts.len(), totals.join(", "));
    Ok(())
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    // Colours only for a person at a terminal, never into files or journald.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let store = xmppwall_store::Store::open(&config.store).context("cannot open the store")?;
        if let Some(path) = store.path() {
            info!(path = %path.display(), "store opened");
        }
        let shared =
            server::Shared::with_store(config, store).context("cannot load TLS certificates")?;
        // What the store keeps comes back before any socket listens: no client and
        // no operator sees the state without it.
        shared.restore().await;
        let config = shared.config.load_full();
        let listeners = server::bind(&config).await?;
        if let Some(admin) = &config.admin {
            let listener = xmppwall_admin::bind(admin).await?;
            tokio::spawn(xmppwall_admin::serve(shared.clone(), listener));
        }
        let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let mut user1 = signal(SignalKind::user_defined1()).context("cannot watch SIGUSR1")?;
        let reloader = shared.clone();
        let mut list_check = tokio::time::interval(LIST_CHECK_INTERVAL);
        let mut list_times = list_file_times(&reloader);
        let stop = async move {
            loop {
                tokio::select! {
                    _ = hangup.recv() => {
                        reload(&reloader).await;
                        list_times = list_file_times(&reloader);
                    }
                    _ = list_check.tick() => {
                        let now = list_file_times(&reloader);
                        if now != list_times {
                            info!("a list file changed; reloading");
                            reload(&reloader).await;
                            list_times = list_file_times(&reloader);
                        }
                    }
                    _ = user1.recv() => log_stats(&reloader),
                    _ = terminate.recv() => { info!("SIGTERM received"); break }
                    _ = interrupt.recv() => { info!("SIGINT received"); break }
                }
            }
        };
        server::serve(shared, listeners, stop).await;
        info!("stopped");
        Ok(())
    })
}

/// How often list files are checked for changes.
const LIST_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// The modification times of the policy's list files (a changed file reloads).
fn list_file_times(shared: &server::Shared) -> Vec<Option<std::time::SystemTime>> {
    shared
        .policy
        .load()
        .files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// SIGUSR1: one log line with the counters and the shared tables' sizes.
fn log_stats(shared: &server::Shared) {
    let limits = shared.limiter.load().state.snapshot();
    let config = shared.config.load();
    let rules: Vec<String> = config
        .policy
        .rule_hits()
        .into_iter()
        .map(|(chain, rule, hits, shadow)| format!("{chain}/{rule}:{hits}/{shadow}"))
        .collect();
    let s = &shared.stats;
    let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    info!(
        open_connections = s.open_connections(),
        accepted = s.accepted_total(),
        sasl_successes = n(&s.sasl_successes),
        sasl_failures = n(&s.sasl_failures),
        stanzas_to_server = n(&s.stanzas_to_server),
        stanzas_to_client = n(&s.stanzas_to_client),
        stanzas_bounced = n(&s.stanzas_bounced),
        %limits,
        rules = rules.join(","),
        "stats"
    );
}

/// SIGHUP: read the configuration and certificates again; keep the running ones if
/// anything is wrong. The admin API's reload takes the same path.
async fn reload(shared: &std::sync::Arc<server::Shared>) {
    // Reading and compiling the files is blocking work: off the async workers.
    let reloading = shared.clone();
    let result = match tokio::task::spawn_blocking(move || reloading.reload_from_file()).await {
        Ok(result) => result,
        Err(e) => {
            error!(error = %e, "the reload failed; the running configuration stays");
            return;
        }
    };
    match result {
        Ok(path) => info!(config = %path.display(), "configuration reloaded"),
        Err(server::ReloadError::Invalid(e)) => {
            for problem in &e.problems {
                error!(%problem, "reload refused; the running configuration stays");
            }
        }
        Err(e) => warn!(error = %e, "reload refused; the running configuration stays"),
    }
}

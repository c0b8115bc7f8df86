//! `xmppwall-bench`: the load generator and scripted XMPP sink behind
//! `bench/run-relay.sh`. See BENCHMARKS.md for what each measurement means.
#![forbid(unsafe_code)]

mod attack;
mod procfs;
mod record;
mod report;
mod run;
mod scan;
mod sink;
mod tls;
mod workload;
mod xmpp;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xmppwall-bench", about = "Benchmarks for xmppwall")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A minimal scripted XMPP server: logs anyone in, counts and discards stanzas,
    /// answers pings.
    Sink {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// K connections send a stanza mix as fast as the path takes it.
    Throughput(run::ThroughputArgs),
    /// One connection, one ping in flight: round-trip time percentiles.
    Latency(run::LatencyArgs),
    /// Opens many authenticated connections, leaves them idle, reads the memory of
    /// the process under test.
    Idle(run::IdleArgs),
    /// One attack while legitimate users exchange messages (bench/attacks/run.py).
    Attack(attack::AttackArgs),
    /// Prints the markdown tables for a results file.
    Report { results: PathBuf },
    /// Prints COUNT distinct free TCP ports on 127.0.0.1, one a line.
    FreePorts { count: usize },
    /// Writes the throughput test's stanza mix (the first COUNT stanzas) to standard
    /// output, for profiling the framer on it (`frame_traffic --file`).
    Workload {
        #[arg(long, default_value_t = 20_000)]
        count: usize,
    },
}

/// Binds all the ports at once before releasing them, so they are distinct. Another
/// process could take one in between; the script checks that every server started.
fn free_ports(count: usize) -> anyhow::Result<()> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    for l in &listeners {
        println!("{}", l.local_addr()?.port());
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Worker threads default to the CPUs this process may use, so `taskset`
    // decides how many cores the generator gets.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xmppwall-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Sink { listen } => sink::run(listen).await,
            Command::Throughput(args) => run::throughput(args).await,
            Command::Latency(args) => run::latency(args).await,
            Command::Idle(args) => run::idle(args).await,
            Command::Attack(args) => attack::run(args).await,
            Command::Report { results } => report::print(&results),
            Command::FreePorts { count } => free_ports(count),
            Command::Workload { count } => {
                use std::io::Write;
                let w = workload::generate(run::WORKLOAD_SEED, count);
                std::io::stdout().write_all(&w.bytes).map_err(Into::into)
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xmppwall-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! A Redis server for a test: Debian's `redis-server` on a free loopback port, in a
//! temporary directory, without persistence of its own; stopped (losing its data, or
//! saving it as `SHUTDOWN SAVE` does) and started again on the same port when a test
//! needs Redis to go away.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::ports::free_loopback_addr;
use super::process::{wait_while_running, ServerProcess};

/// A running (or stopped) Redis; killed on drop.
pub struct Redis {
    pub addr: SocketAddr,
    log_path: PathBuf,
    process: Option<ServerProcess>,
    dir: TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("xmppwall-test-redis-")
            .tempdir()
            .expect("creating a temporary directory for Redis");
        let mut redis = Redis {
            addr: free_loopback_addr(),
            log_path: dir.path().join("redis.log"),
            process: None,
            dir,
        };
        redis.start_again();
        redis
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Kills Redis (its data goes with it: nothing is persisted).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
        // Wait until the port no longer accepts.
        let addr = self.addr;
        super::process::wait_until(Duration::from_secs(10), "Redis to stop", || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .is_err()
                .then_some(())
        });
    }

    /// Stops Redis as an operator's restart does: `SHUTDOWN SAVE` writes its data to
    /// disk first, and [`Self::start_again`] loads it back.
    pub fn shutdown_saving(&mut self) {
        use std::io::Write;
        let mut tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
            .expect("connecting to Redis");
        tcp.write_all(b"*2\r\n$8\r\nSHUTDOWN\r\n$4\r\nSAVE\r\n")
            .expect("sending SHUTDOWN SAVE");
        let addr = self.addr;
        super::process::wait_until(Duration::from_secs(10), "Redis to shut down", || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .is_err()
                .then_some(())
        });
        assert!(
            self.dir.path().join("dump.rdb").exists(),
            "Redis saved nothing"
        );
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts Redis on the same port (with the data [`Self::shutdown_saving`] left).
    pub fn start_again(&mut self) {
        assert!(self.process.is_none(), "Redis is running already");
        let mut command = Command::new("redis-server");
        command
            .arg("--port")
            .arg(self.addr.port().to_string())
            .arg("--bind")
            .arg(self.addr.ip().to_string())
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(self.dir.path())
            .current_dir(self.dir.path());
        let mut process = ServerProcess::spawn("redis-server", command, &self.log_path);
        let addr = self.addr;
        let log = self.log_path.clone();
        wait_while_running(
            &format!("Redis to accept TCP on {addr}"),
            &mut process,
            Duration::from_secs(20),
            || {
                TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                    .ok()
                    .map(|_| ())
            },
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
        self.process = Some(process);
    }
}

//! Child processes owned by a test: killed (with everything they started) when dropped,
//! so a failing test leaves no server behind holding a port.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

/// A spawned server process, in its own process group so that helpers it forks (ejabberd's
/// `erl_child_setup`, port programs) die with it.
pub struct ServerProcess {
    name: &'static str,
    child: Child,
    exited: Option<ExitStatus>,
}

impl ServerProcess {
    /// Spawns `command` with stdin closed and stdout and stderr appended to `output_log`.
    pub fn spawn(name: &'static str, mut command: Command, output_log: &Path) -> ServerProcess {
        let out = File::create(output_log)
            .unwrap_or_else(|e| panic!("creating {}: {e}", output_log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("duplicating the handle of {}: {e}", output_log.display()));
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({command:?}): {e}"));
        ServerProcess {
            name,
            child,
            exited: None,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended, without waiting.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("checking whether {} is running: {e}", self.name));
        }
        self.exited
    }

    /// Waits at most `timeout` for the process to end on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by name (`"HUP"`, `"TERM"`, ...) to the process itself.
    pub fn signal(&mut self, signal: &str) {
        if let Some(status) = self.try_exit_status() {
            panic!("cannot signal {}: it already exited ({status})", self.name);
        }
        send_signal(signal, &self.child.id().to_string());
    }

    /// Kills the whole process group and reaps the process.
    pub fn kill(&mut self) {
        // Once reaped, the pid (and so the group id) may belong to someone else. (No
        // panicking here: this runs in `drop`, possibly while a test is unwinding.)
        if self.exited.is_some() || matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // The process group id is the child's pid (`process_group(0)`); a negative pid
        // addresses the group. `kill` from procps avoids a libc dependency for one syscall.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn send_signal(signal: &str, target: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, target])
        .status()
        .unwrap_or_else(|e| panic!("running kill -s {signal} {target}: {e}"));
    assert!(
        status.success(),
        "kill -s {signal} {target} failed: {status}"
    );
}

/// Polls `ready` every 50 ms until it returns `Some` or `timeout` passes (then panics,
/// naming `what` was awaited). For conditions with no process to watch, such as a line
/// appearing in a log.
pub fn wait_until<T>(timeout: Duration, what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = ready() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `ready` every 50 ms until it returns `Some`, `process` dies or `timeout` passes.
/// `describe` is called for the panic message (typically the server's log).
pub fn wait_while_running<T>(
    what: &str,
    process: &mut ServerProcess,
    timeout: Duration,
    mut ready: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = ready() {
            return value;
        }
        if let Some(status) = process.try_exit_status() {
            panic!(
                "{} exited ({status}) while waiting for {what}\n{}",
                process.name,
                describe()
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "{} did not get to {what} within {timeout:?}\n{}",
                process.name,
                describe()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

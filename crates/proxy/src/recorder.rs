//! Writes the stanza recording (`[record] path`) that `xmppwall replay` reads.
//!
//! Sessions hand lines to a bounded queue; one task appends them to the file. When
//! the queue is full (the disk is slower than the traffic) lines are dropped and
//! counted, never waited for: recording must not slow the relay down.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::warn;

/// Lines waiting for the writer at most.
const QUEUE_LINES: usize = 16 * 1024;

#[derive(Debug)]
pub struct Recorder {
    tx: mpsc::Sender<String>,
    pub dropped: AtomicU64,
}

impl Recorder {
    /// Opens `path` for appending and starts the writer task (needs a runtime).
    pub async fn start(path: &Path) -> std::io::Result<Arc<Recorder>> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE_LINES);
        let shown = path.display().to_string();
        tokio::spawn(async move {
            let mut out = tokio::io::BufWriter::new(file);
            while let Some(line) = rx.recv().await {
                let mut result = out.write_all(line.as_bytes()).await;
                // Write out whatever else is queued, then flush once.
                while let (Ok(()), Ok(more)) = (&result, rx.try_recv()) {
                    result = out.write_all(more.as_bytes()).await;
                }
                if let Err(e) = result.and(out.flush().await) {
                    warn!(path = %shown, error = %e, "cannot write the recording; recording stops");
                    return;
                }
            }
        });
        Ok(Arc::new(Recorder {
            tx,
            dropped: AtomicU64::new(0),
        }))
    }

    pub fn record(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

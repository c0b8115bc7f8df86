//! A byte tap between xmppwall and a real server: a plain TCP forwarder on a loopback
//! port that copies both ways and records every byte sent towards the server, so a
//! test can assert what xmppwall wrote upstream, byte for byte. The server behind it
//! still does all the work; the tap changes nothing.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub struct Tap {
    /// Where xmppwall should connect (its `[upstream] address`).
    pub addr: SocketAddr,
    /// Everything written towards the server, one entry per connection, in the
    /// order the connections came.
    upstream: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Tap {
    /// A tap in front of `server`, forwarding until the test ends.
    pub fn start(server: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("tap: bind a loopback port");
        let addr = listener.local_addr().expect("tap: local address");
        let upstream: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let record = upstream.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(server) else {
                    continue;
                };
                let index = {
                    let mut all = record.lock().expect("tap record");
                    all.push(Vec::new());
                    all.len() - 1
                };
                let (c2, s2) = (
                    client.try_clone().expect("tap: clone"),
                    server.try_clone().expect("tap: clone"),
                );
                let record = record.clone();
                thread::spawn(move || copy(client, server, Some((record, index))));
                thread::spawn(move || copy(s2, c2, None));
            }
        });
        Tap { addr, upstream }
    }

    /// Waits (at most 10 s) until one connection has carried bytes towards the
    /// server that contain `needle`, and returns all that connection carried.
    pub fn wait_upstream_containing(&self, needle: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let all = self.upstream.lock().expect("tap record").clone();
            if let Some(bytes) = all
                .into_iter()
                .find(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            {
                return bytes;
            }
            assert!(
                Instant::now() < deadline,
                "the server was never sent {:?}; it was sent {:?}",
                String::from_utf8_lossy(needle),
                self.upstream
                    .lock()
                    .expect("tap record")
                    .iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect::<Vec<_>>()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

type Record = (Arc<Mutex<Vec<Vec<u8>>>>, usize);

fn copy(mut from: TcpStream, mut to: TcpStream, record: Option<Record>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some((all, index)) = &record {
                    all.lock().expect("tap record")[*index].extend_from_slice(&buf[..n]);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

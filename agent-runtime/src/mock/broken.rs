//! A deliberately broken OpenAI-shaped endpoint, for fault tests: it accepts connections on
//! loopback and then misbehaves in one chosen way — never answers, stalls after the headers,
//! drips the body one byte at a time, or resets the connection.
//!
//! The rate-limited [`MockServer`](super::MockServer) plays a provider that works; this one plays
//! the network and server failures a client's deadlines must survive. Written on a raw socket
//! rather than axum because each misbehaviour is a way of *not* speaking HTTP properly.
//!
//! ```
//! use agent_runtime::mock::broken::{BrokenServer, Misbehaviour};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let server = BrokenServer::start(Misbehaviour::Reset).await?;
//! assert!(server.base_url().starts_with("http://127.0.0.1:"));
//! assert_eq!(server.connections(), 0);
//! # Ok::<(), std::io::Error>(())
//! # }).unwrap();
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// How a [`BrokenServer`] fails every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Misbehaviour {
    /// Accepts the connection, reads the request, never writes a byte.
    NeverAnswer,
    /// Sends `200 OK` headers announcing a JSON body, then nothing more.
    StallAfterHeaders,
    /// Sends `200 OK` headers, then one byte of the body every `every`, forever.
    Drip {
        /// The gap between two bytes.
        every: Duration,
    },
    /// Reads the request, then resets the connection (TCP RST).
    Reset,
}

/// A loopback server that fails every request the same way. Stops when dropped (open
/// connections are closed).
#[derive(Debug)]
pub struct BrokenServer {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl BrokenServer {
    /// Starts on `127.0.0.1` and a free port.
    pub async fn start(misbehaviour: Misbehaviour) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            // Owned by the accept loop: aborting it drops the set, which aborts every connection.
            let mut open = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                open.spawn(misbehave(stream, misbehaviour));
                while open.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            addr,
            connections,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL an OpenAI client takes (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for BrokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const HEADERS: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000000\r\n\r\n";

async fn misbehave(mut stream: TcpStream, misbehaviour: Misbehaviour) {
    // The request's head (and usually its small body) arrives in the first read; what it says
    // does not matter.
    let mut buf = vec![0u8; 64 * 1024];
    if stream.read(&mut buf).await.is_err() {
        return;
    }
    match misbehaviour {
        Misbehaviour::NeverAnswer => std::future::pending().await,
        Misbehaviour::StallAfterHeaders => {
            if stream.write_all(HEADERS).await.is_ok() && stream.write_all(b"{").await.is_ok() {
                std::future::pending::<()>().await;
            }
        }
        Misbehaviour::Drip { every } => {
            if stream.write_all(HEADERS).await.is_err() || stream.write_all(b"{").await.is_err() {
                return;
            }
            // JSON allows any amount of whitespace: the body stays valid-looking forever.
            loop {
                tokio::time::sleep(every).await;
                if stream.write_all(b" ").await.is_err() {
                    return;
                }
            }
        }
        Misbehaviour::Reset => {
            // A zero linger makes the close a reset rather than an orderly FIN.
            let _ = stream.set_zero_linger();
        }
    }
}

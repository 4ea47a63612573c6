//! Listeners and the one-port multiplexer.
//!
//! A [`Transport`] turns a bound listener into a stream of connections that
//! tonic serves. TCP connections are split on their first byte: `0x01` is
//! the book's Raft byte (refused until the Raft transport lands), anything
//! else is gRPC, over TLS unless in dev mode. Handshakes run in a task per
//! connection, so a slow or silent client never stalls accept.

pub mod tls;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

/// First byte of a Raft connection on the shared port (the book's RaftRPC).
pub const RAFT_RPC: u8 = 0x01;
/// How long a new connection may take to send its first byte and finish
/// its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A source of connections for tonic.
pub trait Transport: Send + 'static {
    /// The connection type handed to tonic.
    type Io: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static;

    /// Accepts connections until `cancel` fires.
    fn incoming(self, cancel: CancellationToken) -> ReceiverStream<io::Result<Self::Io>>;
}

/// TCP with mutual TLS; the server config is re-read for every connection
/// so a certificate or CA reload applies to new connections at once.
pub struct TlsTcp {
    /// The bound listener.
    pub listener: TcpListener,
    /// The current TLS config (swapped by hot reload).
    pub tls: Arc<ArcSwap<ServerConfig>>,
}

/// Plain TCP, for `--dev` only.
pub struct PlainTcp {
    /// The bound listener.
    pub listener: TcpListener,
}

/// A Unix domain socket for the co-located app; removes its file on drop.
pub struct Unix {
    /// The bound listener.
    pub listener: UnixListener,
    /// The socket file.
    pub path: PathBuf,
}

impl Unix {
    /// Binds `path` (replacing a stale socket file) with file mode `mode`.
    pub fn bind(path: &Path, mode: u32) -> io::Result<Unix> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        Ok(Unix {
            listener,
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Unix {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Accepts TCP connections and hands each, in its own task, to `handle`,
/// which returns the connection to serve (or `None` to drop it).
fn accept_tcp<Io, F, Fut>(
    listener: TcpListener,
    cancel: CancellationToken,
    handle: F,
) -> ReceiverStream<io::Result<Io>>
where
    Io: Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<Io>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                a = listener.accept() => a,
            };
            let (sock, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = sock.set_nodelay(true);
            let (tx, conn) = (tx.clone(), handle(sock));
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let io = tokio::select! {
                    _ = cancel.cancelled() => return,
                    io = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn) => io,
                };
                match io {
                    Ok(Some(io)) => {
                        let _ = tx.send(Ok(io)).await;
                    }
                    Ok(None) => {}
                    Err(_) => debug!(%peer, "connection dropped: handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Peeks at the first byte: true for gRPC; false if the peer closed or
/// sent the Raft byte (no Raft transport on this node yet).
async fn first_byte_is_grpc(sock: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    match sock.peek(&mut b).await {
        Ok(1) if b[0] == RAFT_RPC => {
            debug!("raft connection refused: no raft transport on this node yet");
            false
        }
        Ok(1) => true,
        _ => false,
    }
}

impl Transport for TlsTcp {
    type Io = TlsStream<TcpStream>;

    fn incoming(self, cancel: CancellationToken) -> ReceiverStream<io::Result<Self::Io>> {
        let tls = self.tls;
        accept_tcp(self.listener, cancel, move |sock| {
            let acceptor = TlsAcceptor::from(tls.load_full());
            async move {
                if !first_byte_is_grpc(&sock).await {
                    return None;
                }
                let peer = sock.peer_addr().ok();
                match acceptor.accept(sock).await {
                    Ok(tls) => Some(tls),
                    Err(e) => {
                        debug!(?peer, error = %e, "TLS handshake failed");
                        None
                    }
                }
            }
        })
    }
}

impl Transport for PlainTcp {
    type Io = TcpStream;

    fn incoming(self, cancel: CancellationToken) -> ReceiverStream<io::Result<Self::Io>> {
        accept_tcp(self.listener, cancel, |sock| async move {
            first_byte_is_grpc(&sock).await.then_some(sock)
        })
    }
}

impl Transport for Unix {
    type Io = UnixStream;

    fn incoming(self, cancel: CancellationToken) -> ReceiverStream<io::Result<Self::Io>> {
        let (tx, rx) = mpsc::channel(128);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = cancel.cancelled() => break,
                    a = self.listener.accept() => a,
                };
                match accepted {
                    Ok((sock, _)) => {
                        if tx.send(Ok(sock)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "unix socket accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            drop(self);
        });
        ReceiverStream::new(rx)
    }
}

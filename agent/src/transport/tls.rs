//! TLS material: loading PEM files into a rustls `ServerConfig` that
//! requires client certificates, the peers' TLS of the Raft path, and
//! reading a certificate's Common Name.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// A TLS file that could not be used, named with the reason.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct TlsError {
    /// The file at fault.
    pub path: std::path::PathBuf,
    /// What was wrong with it.
    pub reason: String,
}

fn err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Installs ring as rustls' process-wide crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(path, e))?;
    if certs.is_empty() {
        return Err(err(path, "no certificate found"));
    }
    Ok(certs)
}

/// Builds the mTLS server config: our chain and key, client certificates
/// required and verified against `ca`, ALPN h2 (tonic clients need it).
pub fn server_config(cert: &Path, key: &Path, ca: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    install_crypto_provider();
    let chain = load_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| err(key, e))?;
    let mut roots = RootCertStore::empty();
    for ca_cert in load_certs(ca)? {
        roots.add(ca_cert).map_err(|e| err(ca, e))?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| err(ca, e))?;
    let mut config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| err(key, format!("does not match {}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The subject Common Name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

/// TLS of the Raft path between peers: both ends present the peer
/// certificate, verified against the peer CA, and each checks that the
/// other's Common Name is one of `names`. Swapped whole on reload.
#[derive(Debug)]
pub struct PeerTls {
    /// What an accepting node uses: client certificates required.
    pub server: Arc<ServerConfig>,
    /// What a dialing node uses: our certificate as the client's.
    pub client: Arc<ClientConfig>,
    /// Common Names accepted from peers: our own peer certificate's and
    /// the configured `peer_names`.
    pub names: BTreeSet<String>,
}

impl PeerTls {
    /// Whether a peer whose leaf certificate is `der` may speak Raft with
    /// us; the reason if not.
    pub fn admit(&self, der: Option<&[u8]>) -> Result<String, String> {
        let der = der.ok_or("no peer certificate")?;
        let cn = common_name(der).ok_or("peer certificate has no common name")?;
        if self.names.contains(&cn) {
            Ok(cn)
        } else {
            Err(format!(
                "peer certificate CN {cn:?} is not a proglog peer name"
            ))
        }
    }
}

/// Loads the peer TLS material: chain, key and CA, plus the extra peer
/// names accepted besides our own certificate's CN.
pub fn peer_tls(cert: &Path, key: &Path, ca: &Path, extra: &[String]) -> Result<PeerTls, TlsError> {
    let server = server_config(cert, key, ca)?;
    let chain = load_certs(cert)?;
    let own = common_name(chain[0].as_ref())
        .ok_or_else(|| err(cert, "the peer certificate has no common name"))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| err(key, e))?;
    let mut roots = RootCertStore::empty();
    for ca_cert in load_certs(ca)? {
        roots.add(ca_cert).map_err(|e| err(ca, e))?;
    }
    let mut client = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| err(key, format!("does not match {}: {e}", cert.display())))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    let names = std::iter::once(own).chain(extra.iter().cloned()).collect();
    Ok(PeerTls {
        server,
        client: Arc::new(client),
        names,
    })
}

/// What a rustls client sends first (a real ClientHello), for tests that
/// feed the acceptor the opening of a TLS handshake.
#[cfg(test)]
pub(crate) fn client_hello() -> Vec<u8> {
    install_crypto_provider();
    let config = ClientConfig::builder()
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).expect("a client connection");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("writing to a Vec");
    }
    out
}

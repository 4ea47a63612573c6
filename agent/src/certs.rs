//! `proglog certs`: a development CA, a server certificate (server and
//! client auth, so peers can use it too) and client certificates `root` and
//! `nobody`, with the file names of the book's cfssl setup.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// rcgen refused the parameters.
    #[error("generating {what}: {source}")]
    Generate {
        /// Which certificate.
        what: String,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// Writing a file failed.
    #[error("{}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The files [`generate`] writes.
pub const FILES: [&str; 8] = [
    "ca.pem",
    "ca-key.pem",
    "server.pem",
    "server-key.pem",
    "root-client.pem",
    "root-client-key.pem",
    "nobody-client.pem",
    "nobody-client-key.pem",
];

/// Whether `dir` already holds every file of a generated set.
pub fn exist(dir: &Path) -> bool {
    FILES.iter().all(|f| dir.join(f).is_file())
}

/// Writes `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem`,
/// `root-client.pem`, `root-client-key.pem`, `nobody-client.pem` and
/// `nobody-client-key.pem` into `dir`. `hosts` become the server's SANs
/// (IP addresses as IP SANs). Keys are written with mode 0600.
pub fn generate(dir: &Path, hosts: &[String]) -> Result<(), CertsError> {
    let gen = |what: &str| {
        let what = what.to_string();
        move |source| CertsError::Generate { what, source }
    };
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(gen("CA"))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "proglog dev CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(gen("CA key"))?;
    let ca_cert = ca.self_signed(&ca_key).map_err(gen("CA"))?;
    write(dir, "ca.pem", &ca_cert.pem(), 0o644)?;
    write(dir, "ca-key.pem", &ca_key.serialize_pem(), 0o600)?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |name: &str, cn: &str, sans: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>| {
        let mut p = CertificateParams::new(sans).map_err(gen(name))?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = usages;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().map_err(gen(name))?;
        let cert = p.signed_by(&key, &issuer).map_err(gen(name))?;
        write(dir, &format!("{name}.pem"), &cert.pem(), 0o644)?;
        write(dir, &format!("{name}-key.pem"), &key.serialize_pem(), 0o600)
    };
    let both = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf("server", "server", hosts.to_vec(), both)?;
    for user in ["root", "nobody"] {
        leaf(
            &format!("{user}-client"),
            user,
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )?;
    }
    Ok(())
}

/// What [`generate`] wrote, for `proglog certs` to print: each file with
/// its role, and the flags that use them.
pub fn summary(dir: &Path, hosts: &[String]) -> String {
    let d = dir.display();
    format!(
        "wrote a development CA and certificates in {d}/:\n\
         \x20 ca.pem, ca-key.pem                        the CA (keep ca-key.pem private)\n\
         \x20 server.pem, server-key.pem                agents, server and client auth (peers); SANs {}\n\
         \x20 root-client.pem, root-client-key.pem      client CN root (config/policy.csv allows it)\n\
         \x20 nobody-client.pem, nobody-client-key.pem  client CN nobody (no ACL rights)\n\
         clients: --tls-ca-file {d}/ca.pem --tls-cert-file {d}/root-client.pem --tls-key-file {d}/root-client-key.pem\n",
        hosts.join(", ")
    )
}

fn write(dir: &Path, name: &str, contents: &str, mode: u32) -> Result<(), CertsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|source| CertsError::Write { path, source })
}

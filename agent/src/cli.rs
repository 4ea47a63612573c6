//! The client subcommands: `produce`, `consume`, `servers`, built on
//! `proglog-client`.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use proglog_client::{Client, Error, Target, Tls};
use tokio_stream::StreamExt;

/// How to reach an agent (shared by the client subcommands).
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// Agent address(es), host:port[,host:port...]; the first that answers
    /// is used.
    #[arg(long, default_value = "127.0.0.1:8400", value_delimiter = ',')]
    pub addr: Vec<String>,
    /// CA that signs the agents' certificates (PEM).
    #[arg(long, requires_all = ["tls_cert_file", "tls_key_file"])]
    pub tls_ca_file: Option<PathBuf>,
    /// Our client certificate (PEM); its CN is our ACL subject.
    #[arg(long, requires = "tls_ca_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Our client key (PEM).
    #[arg(long, requires = "tls_ca_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Use the agent's Unix socket instead of TCP.
    #[arg(long, conflicts_with = "addr")]
    pub unix_socket: Option<PathBuf>,
}

impl ConnectArgs {
    /// Connects to the first address that accepts.
    pub async fn connect(&self) -> Result<Client, Error> {
        if let Some(path) = &self.unix_socket {
            return Client::connect(Target::Unix(path.clone())).await;
        }
        let tls = match (&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file) {
            (Some(ca), Some(cert), Some(key)) => Some(Tls::from_files(ca, cert, key)?),
            _ => None,
        };
        let mut last = Error::Address(String::new());
        for addr in &self.addr {
            match Client::connect(Target::Tcp {
                addr: addr.clone(),
                tls: tls.clone(),
            })
            .await
            {
                Ok(client) => return Ok(client),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// `proglog produce`: each argument, or each stdin line, becomes a record;
/// prints one offset per line.
pub async fn produce(conn: &ConnectArgs, values: Vec<String>) -> Result<(), Error> {
    let mut client = conn.connect().await?;
    let mut out = std::io::stdout().lock();
    let mut send = async |value: Vec<u8>| -> Result<(), Error> {
        let offset = client.produce(value).await?;
        let _ = writeln!(out, "{offset}");
        Ok(())
    };
    if values.is_empty() {
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|source| Error::File {
                path: "<stdin>".into(),
                source,
            })?;
            send(line.into_bytes()).await?;
        }
    } else {
        for v in values {
            send(v.into_bytes()).await?;
        }
    }
    Ok(())
}

/// `proglog consume`: prints records from `from` to the end of the log (or
/// forever with `follow`), one per line.
pub async fn consume(conn: &ConnectArgs, from: u64, follow: bool, json: bool) -> Result<(), Error> {
    let mut client = conn.connect().await?;
    let mut out = std::io::stdout().lock();
    if follow {
        let mut stream = client.consume_stream(from).await?;
        while let Some(item) = stream.next().await {
            let (offset, value) = item?;
            print_record(&mut out, offset, &value, json);
        }
        return Ok(());
    }
    let mut offset = from;
    loop {
        match client.consume(offset).await {
            Ok(value) => print_record(&mut out, offset, &value, json),
            Err(Error::Status(s)) if s.code() == tonic::Code::OutOfRange => return Ok(()),
            Err(e) => return Err(e),
        }
        offset += 1;
    }
}

/// `proglog servers`: one line per server: id, address, leader flag.
pub async fn servers(conn: &ConnectArgs) -> Result<(), Error> {
    let mut client = conn.connect().await?;
    for s in client.servers().await? {
        println!(
            "{}\t{}\t{}",
            s.id,
            s.rpc_addr,
            if s.is_leader { "leader" } else { "follower" }
        );
    }
    Ok(())
}

fn print_record(out: &mut impl Write, offset: u64, value: &[u8], json: bool) {
    let line = if !json {
        String::from_utf8_lossy(value).into_owned()
    } else if let Ok(text) = std::str::from_utf8(value) {
        serde_json::json!({ "offset": offset, "value": text }).to_string()
    } else {
        serde_json::json!({ "offset": offset, "value_base64": base64(value) }).to_string()
    };
    let _ = writeln!(out, "{line}");
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(&[0xff, 0xfe, 0x00, 0x01]), "//4AAQ==");
    }
}

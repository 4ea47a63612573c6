//! The client subcommands: `produce`, `consume`, `servers`, `members`, and
//! the operator verbs `status`, `add-voter`, `remove-peer`,
//! `transfer-leader` (the admin service), built on `proglog-client`.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use proglog_client::proto::admin::{ClusterStatusResponse, GossipMember};
use proglog_client::{leader_addr, Client, ClusterClient, ClusterConfig, Error, Target, Tls};
use tokio_stream::StreamExt;

/// How to reach an agent (shared by the client subcommands).
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// Agent address(es), host:port[,host:port...]: seeds from which
    /// `produce` and `consume --follow` learn the cluster (writes go to the
    /// leader, streams to a follower); other commands use the first that
    /// answers.
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
        let tls = self.tls()?;
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

    /// The client TLS material the flags name, if any.
    /// A leader-aware client of the cluster, seeded with every `--addr`
    /// (`None` over the Unix socket: one agent).
    pub async fn cluster(&self) -> Result<Option<ClusterClient>, Error> {
        if self.unix_socket.is_some() {
            return Ok(None);
        }
        let config = ClusterConfig::new(self.addr.clone(), self.tls()?);
        Ok(Some(ClusterClient::connect(config).await?))
    }

    fn tls(&self) -> Result<Option<Tls>, Error> {
        Ok(
            match (&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file) {
                (Some(ca), Some(cert), Some(key)) => Some(Tls::from_files(ca, cert, key)?),
                _ => None,
            },
        )
    }

    /// Runs a leader-only admin `call`; when the agent is a follower that
    /// names the leader, runs it once more against the leader's address
    /// with the same TLS flags (over TCP: a Unix socket reaches only its
    /// own agent, so there the follower's answer is the error).
    async fn on_leader<T>(
        &self,
        mut call: impl AsyncFnMut(&mut Client) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut client = self.connect().await?;
        let error = match call(&mut client).await {
            Ok(answer) => return Ok(answer),
            Err(e) => e,
        };
        let Some(leader) = leader_addr(&error).filter(|_| self.unix_socket.is_none()) else {
            return Err(error);
        };
        eprintln!("proglog: {error}; retrying on the leader at {leader}");
        let mut client = Client::connect(Target::Tcp {
            addr: leader,
            tls: self.tls()?,
        })
        .await?;
        call(&mut client).await
    }
}

/// `proglog produce`: each argument, or each stdin line, becomes a record;
/// prints one offset per line.
pub async fn produce(conn: &ConnectArgs, values: Vec<String>) -> Result<(), Error> {
    // Over TCP through the cluster's leader, idempotent and retried across
    // a leader change; over the Unix socket through that agent.
    let cluster = conn.cluster().await?;
    let mut single = match &cluster {
        Some(_) => None,
        None => Some(conn.connect().await?),
    };
    let mut out = std::io::stdout().lock();
    let mut send = async |value: Vec<u8>| -> Result<(), Error> {
        let offset = match (&cluster, &mut single) {
            (Some(cluster), _) => cluster.produce(value).await?,
            (None, Some(client)) => client.produce(value).await?,
            (None, None) => unreachable!("one of the two is set"),
        };
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
    let mut out = std::io::stdout().lock();
    if follow {
        // Over TCP from a follower, resuming on another server across a
        // failover; over the Unix socket from that agent.
        if let Some(cluster) = conn.cluster().await? {
            let mut stream = cluster.consume_stream(from);
            while let Some(item) = stream.next().await {
                let (offset, value) = item?;
                print_record(&mut out, offset, &value, json);
            }
            return Ok(());
        }
        let mut stream = conn.connect().await?.consume_stream(from).await?;
        while let Some(item) = stream.next().await {
            let (offset, value) = item?;
            print_record(&mut out, offset, &value, json);
        }
        return Ok(());
    }
    let mut client = conn.connect().await?;
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

/// `proglog status`: the agent's Raft view, then one row per member.
pub async fn status(conn: &ConnectArgs) -> Result<(), Error> {
    let status = conn.connect().await?.cluster_status().await?;
    let _ = std::io::stdout()
        .lock()
        .write_all(status_table(&status).as_bytes());
    Ok(())
}

/// The text of `proglog status`: a header of the answering node's view
/// and an aligned table of members.
fn status_table(s: &ClusterStatusResponse) -> String {
    let leader = if s.leader_id == 0 {
        "none known".to_string()
    } else {
        format!("{} (id {})", s.leader_name, s.leader_id)
    };
    let mut out = format!(
        "node:     {} (id {})\nterm:     {}\nleader:   {leader}\nlast log: {}\napplied:  {}\n\n",
        s.name, s.id, s.term, s.last_log_index, s.applied_index
    );
    let mut rows = vec![[
        "ID".to_string(),
        "NAME".into(),
        "RPC_ADDR".into(),
        "ROLE".into(),
        "MATCHED".into(),
    ]];
    for m in &s.members {
        let role = match (m.id == s.leader_id, m.voter) {
            (true, _) => "leader",
            (false, true) => "voter",
            (false, false) => "learner",
        };
        // Only the leader tracks how far each member's log matches.
        let matched = if s.id == s.leader_id {
            m.matched_index.to_string()
        } else {
            "-".into()
        };
        rows.push([
            m.id.to_string(),
            m.name.clone(),
            m.rpc_addr.clone(),
            role.into(),
            matched,
        ]);
    }
    out.push_str(&aligned(&rows));
    out
}

/// Rows as text, each column padded to its widest cell, two spaces apart.
fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `proglog members`: the agent's gossip view, like `consul members`: one
/// aligned row per member with its gossip address, status and tags.
pub async fn members(conn: &ConnectArgs) -> Result<(), Error> {
    let members = conn.connect().await?.members().await?;
    let _ = std::io::stdout()
        .lock()
        .write_all(members_table(&members).as_bytes());
    Ok(())
}

/// The text of `proglog members`: NAME, ADDRESS, STATUS, TAGS (`k=v`
/// comma-separated, sorted by key), aligned.
fn members_table(members: &[GossipMember]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "ADDRESS".into(),
        "STATUS".into(),
        "TAGS".into(),
    ]];
    for m in members {
        let mut tags: Vec<(&String, &String)> = m.tags.iter().collect();
        tags.sort();
        let tags: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        rows.push([
            m.name.clone(),
            m.addr.clone(),
            m.status.clone(),
            tags.join(","),
        ]);
    }
    aligned(&rows)
}

/// `proglog add-voter`: adds node `id` as a voter (a learner first, until
/// it caught up), on the leader.
pub async fn add_voter(
    conn: &ConnectArgs,
    id: u64,
    name: &str,
    rpc_addr: &str,
) -> Result<(), Error> {
    conn.on_leader(async |c: &mut Client| c.add_voter(id, name, rpc_addr).await)
        .await?;
    println!("added {name} (id {id}) at {rpc_addr} as a voter");
    Ok(())
}

/// `proglog remove-peer`: removes the member `node` names (name or id),
/// on the leader.
pub async fn remove_peer(conn: &ConnectArgs, node: &str) -> Result<(), Error> {
    conn.on_leader(async |c: &mut Client| c.remove_server(node).await)
        .await?;
    println!("removed {node}");
    Ok(())
}

/// `proglog transfer-leader`: asks the leader to hand over to `node`, or
/// to the most caught-up follower.
pub async fn transfer_leader(conn: &ConnectArgs, node: Option<&str>) -> Result<(), Error> {
    let id = conn
        .on_leader(async |c: &mut Client| c.transfer_leadership(node).await)
        .await?;
    println!("leadership handed to node {id}");
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
    use proglog_client::proto::admin::{ClusterMember, ClusterStatusResponse};

    #[test]
    fn status_table_aligns_members_and_marks_the_leader() {
        let member = |id, name: &str, voter, matched_index| ClusterMember {
            id,
            name: name.into(),
            rpc_addr: format!("10.0.0.{id}:8400"),
            voter,
            matched_index,
        };
        let mut status = ClusterStatusResponse {
            id: 1,
            name: "a".into(),
            term: 3,
            leader_id: 1,
            leader_name: "a".into(),
            last_log_index: 12,
            applied_index: 11,
            members: vec![
                member(1, "a", true, 12),
                member(22, "bee", true, 9),
                member(3, "c", false, 0),
            ],
        };
        assert_eq!(
            super::status_table(&status),
            "node:     a (id 1)\nterm:     3\nleader:   a (id 1)\nlast log: 12\napplied:  11\n\n\
             ID  NAME  RPC_ADDR        ROLE     MATCHED\n\
             1   a     10.0.0.1:8400   leader   12\n\
             22  bee   10.0.0.22:8400  voter    9\n\
             3   c     10.0.0.3:8400   learner  0\n"
        );
        status.id = 22;
        status.leader_id = 0;
        let text = super::status_table(&status);
        assert!(text.contains("leader:   none known\n"), "{text}");
        assert!(
            text.contains("bee   10.0.0.22:8400  voter    -\n"),
            "{text}"
        );
    }

    #[test]
    fn members_table_aligns_rows_and_sorts_tags() {
        use proglog_client::proto::admin::GossipMember;
        let member = |name: &str, status: &str, tags: &[(&str, &str)]| GossipMember {
            name: name.into(),
            addr: format!("10.0.0.{}:8401", name.len()),
            status: status.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let text = super::members_table(&[
            member("a", "alive", &[("rpc_addr", "10.0.0.1:8400"), ("id", "7")]),
            member("bee", "failed", &[]),
        ]);
        assert_eq!(
            text,
            "NAME  ADDRESS        STATUS  TAGS\n\
             a     10.0.0.1:8401  alive   id=7,rpc_addr=10.0.0.1:8400\n\
             bee   10.0.0.3:8401  failed\n"
        );
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(&[0xff, 0xfe, 0x00, 0x01]), "//4AAQ==");
    }
}

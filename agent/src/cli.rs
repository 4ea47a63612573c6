//! The client subcommands: `produce`, `consume`, `servers`, `members`, and
//! the operator verbs `status`, `add-voter`, `remove-peer`,
//! `transfer-leader` (the admin service), built on `proglog-client`.
//! A failed connection is explained (what was dialled, what happened, the
//! likely fix: see [`proglog_client::diagnose()`]); statuses print as
//! `CODE_NAME: message`.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use proglog_client::proto::admin::{ClusterStatusResponse, GossipMember};
use proglog_client::{
    diagnose, diagnose::probe, leader_addr, retained_range, Client, ClusterClient, ClusterConfig,
    Error, Target, Tls,
};
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

    /// Explains a connection failure of `result` (see
    /// [`proglog_client::diagnose()`]) against each address dialled;
    /// other results pass through.
    pub async fn explain<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        let error = match result {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        let targets: Vec<Target> = match &self.unix_socket {
            Some(path) => vec![Target::Unix(path.clone())],
            None => {
                let tls = self.tls()?;
                self.addr
                    .iter()
                    .map(|addr| Target::Tcp {
                        addr: addr.clone(),
                        tls: tls.clone(),
                    })
                    .collect()
            }
        };
        let [first, rest @ ..] = targets.as_slice() else {
            return Err(error);
        };
        let what = error.to_string();
        let explained = diagnose(first, error).await;
        if rest.is_empty() || !matches!(explained, Error::Unreachable { .. }) {
            return Err(explained);
        }
        // Several seeds, none reachable: one line per address.
        let mut lines = vec![explained.to_string()];
        for target in rest {
            lines.push(probe(target, what.clone()).await.to_string());
        }
        Err(Error::Unreachable {
            addr: self.addr.join(","),
            cause: "no address answered".into(),
            hint: format!("\n  {}", lines.join("\n  ")),
        })
    }

    /// A leader-aware client of the cluster, seeded with every `--addr`
    /// (`None` over the Unix socket: one agent).
    pub async fn cluster(&self) -> Result<Option<ClusterClient>, Error> {
        if self.unix_socket.is_some() {
            return Ok(None);
        }
        let config = ClusterConfig::new(self.addr.clone(), self.tls()?);
        Ok(Some(ClusterClient::connect(config).await?))
    }

    /// The client TLS material the flags name, if any.
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
    conn.explain(
        async {
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
        .await,
    )
    .await
}

/// `proglog consume`: prints records from `from` to the end of the log (or
/// forever with `follow`), one per line. Without `from` it starts where the
/// log starts: at 0, or, when retention removed the first records, at the
/// lowest offset the agent holds (saying so on stderr). An explicit `from`
/// that holds no record fails with the agent's `OUT_OF_RANGE`, which says
/// whether retention removed it (naming where the log starts) or it is
/// past the end. A follow stream that is cut fails after saying on stderr
/// where to resume.
pub async fn consume(
    conn: &ConnectArgs,
    from: Option<u64>,
    follow: bool,
    json: bool,
) -> Result<(), Error> {
    conn.explain(
        async {
            let mut out = std::io::stdout().lock();
            // Where retention let the log start, when `from` was not given
            // and nothing was printed yet: the reader moves there.
            let skip = |at: u64, printed: bool, e: &Error| {
                let (lowest, _) = retained_range(e)?;
                (from.is_none() && !printed && at < lowest).then(|| {
                    eprintln!(
                        "proglog consume: records before offset {lowest} were removed by \
                         retention; starting at {lowest}"
                    );
                    lowest
                })
            };
            let mut next = from.unwrap_or(0);
            if follow {
                // Over TCP from a follower, resuming on another server across a
                // failover; over the Unix socket from that agent. A follow
                // never ends by itself: an end is a cut, said on stderr.
                let cluster = conn.cluster().await?;
                let mut printed = false;
                let cut = loop {
                    let at = next;
                    let cut = match &cluster {
                        Some(cluster) => {
                            let stream = cluster.consume_stream(at);
                            print_stream(stream, &mut out, json, &mut next).await
                        }
                        None => match conn.connect().await?.consume_stream(at).await {
                            Ok(stream) => print_stream(stream, &mut out, json, &mut next).await,
                            Err(e) => match skip(at, printed, &e) {
                                Some(lowest) => {
                                    next = lowest;
                                    continue;
                                }
                                None => return Err(e),
                            },
                        },
                    };
                    printed |= next > at;
                    match skip(at, printed, &cut) {
                        Some(lowest) => next = lowest,
                        None => break cut,
                    }
                };
                let _ = out.flush();
                eprintln!("proglog consume: the stream was cut (resume with --from {next})");
                return Err(cut);
            }
            let mut client = conn.connect().await?;
            let mut printed = false;
            loop {
                match client.consume(next).await {
                    Ok(value) => {
                        print_record(&mut out, next, &value, json);
                        printed = true;
                    }
                    Err(e) => {
                        if let Some(lowest) = skip(next, printed, &e) {
                            next = lowest;
                            continue;
                        }
                        let past_end = match retained_range(&e) {
                            Some((_, end)) => next >= end,
                            // An agent that does not send the range: any
                            // OUT_OF_RANGE after the start is the end.
                            None => matches!(&e, Error::Status(s) if s.code() == tonic::Code::OutOfRange),
                        };
                        // The end of the log, reached by reading (or an
                        // empty log, without `from`); an explicit `from`
                        // with no record there gets the agent's answer.
                        if past_end && (printed || from.is_none()) {
                            return Ok(());
                        }
                        return Err(e);
                    }
                }
                next += 1;
            }
        }
        .await,
    )
    .await
}

/// Prints a follow stream's records, keeping `next` one past the last
/// printed, until the stream fails or ends; returns why it stopped.
async fn print_stream(
    mut stream: impl tokio_stream::Stream<Item = Result<(u64, proglog_client::Bytes), Error>> + Unpin,
    out: &mut impl Write,
    json: bool,
    next: &mut u64,
) -> Error {
    loop {
        match stream.next().await {
            Some(Ok((offset, value))) => {
                print_record(out, offset, &value, json);
                *next = offset + 1;
            }
            Some(Err(e)) => return e,
            None => return ended(),
        }
    }
}

/// The error of a follow stream that the agent ended (it stopped or
/// drained): a follow only ends when cut.
fn ended() -> Error {
    Error::Status(tonic::Status::unavailable(
        "the agent ended the stream (stopping or restarting?)",
    ))
}

/// `proglog servers`: one line per server: id, address, leader flag. When
/// the list names no leader it is still printed, then the command fails
/// (exit 1) saying so: a script that checks the exit status must not take
/// a cluster that cannot accept writes for a healthy one.
pub async fn servers(conn: &ConnectArgs) -> Result<(), Error> {
    let list = conn
        .explain(async { conn.connect().await?.servers().await }.await)
        .await?;
    for s in &list {
        println!(
            "{}\t{}\t{}",
            s.id,
            s.rpc_addr,
            if s.is_leader { "leader" } else { "follower" }
        );
    }
    leader_named(&list)
}

/// What `proglog servers` says after its list (on stderr, as `proglog:
/// UNAVAILABLE: ...`) when the list names no leader.
pub const NO_LEADER: &str = "no leader: the cluster is electing one or has lost its quorum \
     (the list above is this node's view; writes fail until a leader is elected)";

/// What `proglog servers` says when the node lists no server at all.
pub const NO_CLUSTER: &str =
    "no leader: this node knows no cluster yet (not bootstrapped, not joined)";

/// Ok when `servers` names a leader; else UNAVAILABLE (the code a write
/// gets meanwhile) with [`NO_LEADER`], or [`NO_CLUSTER`] for an empty list.
fn leader_named(servers: &[proglog_client::proto::Server]) -> Result<(), Error> {
    if servers.iter().any(|s| s.is_leader) {
        Ok(())
    } else if servers.is_empty() {
        Err(Error::Status(tonic::Status::unavailable(NO_CLUSTER)))
    } else {
        Err(Error::Status(tonic::Status::unavailable(NO_LEADER)))
    }
}

/// `proglog status`: the agent's Raft view, then one row per member.
pub async fn status(conn: &ConnectArgs) -> Result<(), Error> {
    conn.explain(
        async {
            let status = conn.connect().await?.cluster_status().await?;
            let _ = std::io::stdout()
                .lock()
                .write_all(status_table(&status).as_bytes());
            Ok(())
        }
        .await,
    )
    .await
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
    conn.explain(
        async {
            let members = conn.connect().await?.members().await?;
            let _ = std::io::stdout()
                .lock()
                .write_all(members_table(&members).as_bytes());
            Ok(())
        }
        .await,
    )
    .await
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
    conn.explain(
        async {
            conn.on_leader(async |c: &mut Client| c.add_voter(id, name, rpc_addr).await)
                .await?;
            println!("added {name} (id {id}) at {rpc_addr} as a voter");
            Ok(())
        }
        .await,
    )
    .await
}

/// `proglog remove-peer`: removes the member `node` names (name or id),
/// on the leader.
pub async fn remove_peer(conn: &ConnectArgs, node: &str) -> Result<(), Error> {
    conn.explain(
        async {
            conn.on_leader(async |c: &mut Client| c.remove_server(node).await)
                .await?;
            println!("removed {node}");
            Ok(())
        }
        .await,
    )
    .await
}

/// `proglog transfer-leader`: asks the leader to hand over to `node`, or
/// to the most caught-up follower.
pub async fn transfer_leader(conn: &ConnectArgs, node: Option<&str>) -> Result<(), Error> {
    conn.explain(
        async {
            let id = conn
                .on_leader(async |c: &mut Client| c.transfer_leadership(node).await)
                .await?;
            println!("leadership handed to node {id}");
            Ok(())
        }
        .await,
    )
    .await
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
    use proglog_client::proto::Server;

    #[test]
    fn servers_fails_when_the_list_names_no_leader() {
        let server = |id: &str, is_leader| Server {
            id: id.into(),
            rpc_addr: format!("{id}:8400"),
            is_leader,
        };
        assert!(super::leader_named(&[server("a", false), server("b", true)]).is_ok());
        for (list, said) in [
            (
                vec![server("a", false), server("b", false)],
                super::NO_LEADER,
            ),
            (vec![], super::NO_CLUSTER),
        ] {
            match super::leader_named(&list) {
                Err(proglog_client::Error::Status(s)) => {
                    assert_eq!(s.code(), tonic::Code::Unavailable);
                    assert_eq!(s.message(), said);
                }
                other => panic!("{list:?}: {other:?}"),
            }
            // The test harness's `servers_answered` looks for this.
            let printed = super::leader_named(&list).unwrap_err().to_string();
            assert!(printed.starts_with("UNAVAILABLE: no leader: "), "{printed}");
        }
    }

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

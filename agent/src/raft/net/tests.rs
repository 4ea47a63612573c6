//! The Raft network over real sockets and TLS: agents in process forming a
//! cluster by `start_join_addrs` (gossip, then the leader's reconcile),
//! forwarding, GetServers, peer admission.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proglog_client::{Bytes, Client, Error, Target, Tls};
use rustls::pki_types::pem::PemObject;
use tokio::io::AsyncWriteExt;
use tonic::Code;

use crate::agent::Agent;
use crate::config::Config;
use crate::transport::tls::{self, load_certs};

/// Agents sharing one CA and ACL, in one temp dir.
struct Cluster {
    dir: tempfile::TempDir,
    configs: Vec<Config>,
    agents: Vec<Option<Agent>>,
}

impl Cluster {
    /// Starts node 0 with `bootstrap`, then `n - 1` nodes joining it, and
    /// waits until every node sees every member.
    async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, |c| c).await
    }

    /// [`Cluster::start`] with each node's config passed through `tweak`.
    async fn start_with(n: usize, tweak: impl Fn(Config) -> Config) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        crate::certs::generate(&certs, &["127.0.0.1".into(), "localhost".into()]).unwrap();
        std::fs::write(
            dir.path().join("model.conf"),
            include_str!("../../../../config/model.conf"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("policy.csv"),
            include_str!("../../../../config/policy.csv"),
        )
        .unwrap();
        let mut cluster = Cluster {
            dir,
            configs: Vec::new(),
            agents: Vec::new(),
        };
        for i in 0..n {
            let seed = cluster.agents.first().and_then(|a| a.as_ref());
            let seed = seed
                .and_then(|a| a.membership())
                .map(|m| m.addr().to_string());
            let config = tweak(cluster.config(i, seed));
            config.validate().unwrap();
            let agent = Agent::start(config.clone(), None).await.unwrap();
            // Restarts keep the ports: Raft membership records the RPC
            // address, and the others look for the gossip one.
            let gossip = agent.membership().expect("gossip runs").addr();
            let config = Config {
                rpc_port: agent.rpc_addr().port(),
                bind_addr: gossip,
                ..config
            };
            cluster.configs.push(config);
            cluster.agents.push(Some(agent));
        }
        for i in 0..n {
            cluster.wait_members(i, n).await;
        }
        cluster
    }

    fn config(&self, i: usize, seed: Option<String>) -> Config {
        let path = |name: &str| Some(self.dir.path().join(name));
        let config = Config {
            data_dir: self.dir.path().join(format!("node{i}")),
            node_name: format!("node{i}"),
            bind_addr: "127.0.0.1:0".parse().unwrap(),
            rpc_port: 0,
            bootstrap: seed.is_none(),
            start_join_addrs: seed.into_iter().collect(),
            acl_model_file: path("model.conf"),
            acl_policy_file: path("policy.csv"),
            server_tls_cert_file: path("certs/server.pem"),
            server_tls_key_file: path("certs/server-key.pem"),
            server_tls_ca_file: path("certs/ca.pem"),
            produce_timeout: "3s".into(),
            ..Config::default()
        };
        config.validate().unwrap();
        config
    }

    fn agent(&self, i: usize) -> &Agent {
        self.agents[i].as_ref().expect("running")
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    async fn client(&self, i: usize, user: &str) -> Client {
        let c = self.certs();
        let tls = Tls::from_files(
            &c.join("ca.pem"),
            &c.join(format!("{user}-client.pem")),
            &c.join(format!("{user}-client-key.pem")),
        )
        .unwrap();
        Client::connect(Target::Tcp {
            addr: self.agent(i).rpc_addr().to_string(),
            tls: Some(tls),
        })
        .await
        .unwrap()
    }

    /// Waits until node `i` lists `n` servers and a leader.
    async fn wait_members(&self, i: usize, n: usize) {
        let mut c = self.client(i, "root").await;
        eventually(
            &format!("node{i} to list {n} servers and a leader"),
            async || {
                let servers = c.servers().await.unwrap_or_default();
                servers.len() == n && servers.iter().any(|s| s.is_leader)
            },
        )
        .await;
    }

    /// The index of the node every running node names as leader.
    async fn leader(&self) -> usize {
        let mut found = None;
        eventually("one leader that every running node agrees on", async || {
            let mut names = Vec::new();
            for i in 0..self.agents.len() {
                if self.agents[i].is_none() {
                    continue;
                }
                let servers = self
                    .client(i, "root")
                    .await
                    .servers()
                    .await
                    .unwrap_or_default();
                names.push(servers.into_iter().find(|s| s.is_leader).map(|s| s.id));
            }
            found = names[0].clone();
            let running = |name: &String| {
                self.configs
                    .iter()
                    .position(|c| &c.node_name == name)
                    .is_some_and(|i| self.agents[i].is_some())
            };
            found.as_ref().is_some_and(running) && names.iter().all(|n| n == &found)
        })
        .await;
        let name = found.unwrap();
        self.configs
            .iter()
            .position(|c| c.node_name == name)
            .unwrap()
    }

    /// Waits until node `i` returns `values` from offset 0.
    async fn wait_records(&self, i: usize, values: &[Vec<u8>]) {
        let mut c = self.client(i, "root").await;
        eventually(
            &format!("node{i} to hold {} records", values.len()),
            async || {
                for (offset, value) in values.iter().enumerate() {
                    match c.consume(offset as u64).await {
                        Ok(got) if got == value => {}
                        Ok(got) => panic!("node{i} offset {offset}: {got:?} != {value:?}"),
                        Err(_) => return false,
                    }
                }
                true
            },
        )
        .await;
    }

    async fn shutdown(mut self) {
        for agent in self.agents.iter_mut().filter_map(Option::take) {
            agent.shutdown().await.unwrap();
        }
    }
}

/// Polls `check` until it holds, failing after 30 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, Error>) -> Code {
    match r {
        Err(Error::Status(s)) => s.code(),
        other => panic!("expected a status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_joined_by_address_replicate_and_followers_forward() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut values = Vec::new();
    // On the leader, then on each follower: the follower's answer is the
    // leader's offset, dense after the previous ones.
    for (round, &i) in [leader, followers[0], followers[1]].iter().enumerate() {
        let mut c = cluster.client(i, "root").await;
        for j in 0..5 {
            let value = format!("round {round} record {j} via node{i}").into_bytes();
            let offset = c.produce(value.clone()).await.unwrap();
            assert_eq!(offset, values.len() as u64, "node{i}'s answer");
            values.push(value);
        }
    }
    let batch: Vec<Vec<u8>> = (0..10).map(|j| format!("batch {j}").into_bytes()).collect();
    let mut c = cluster.client(followers[0], "root").await;
    assert_eq!(
        c.produce_batch(batch.clone()).await.unwrap(),
        values.len() as u64
    );
    values.extend(batch);
    for i in 0..3 {
        cluster.wait_records(i, &values).await;
    }
    // GetServers on every node: the three names, their addresses, one
    // leader.
    for i in 0..3 {
        let mut servers = cluster.client(i, "root").await.servers().await.unwrap();
        servers.sort_by(|a, b| a.id.cmp(&b.id));
        let names: Vec<&str> = servers.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(names, ["node0", "node1", "node2"], "node{i}'s view");
        for (j, server) in servers.iter().enumerate() {
            assert_eq!(server.rpc_addr, cluster.agent(j).rpc_addr().to_string());
            assert_eq!(server.is_leader, j == leader, "node{i} on node{j}");
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refuses_a_denied_client_and_forwards_with_the_producer_id() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let mut nobody = cluster.client(follower, "nobody").await;
    assert_eq!(code(nobody.produce("x").await), Code::PermissionDenied);
    // A retried sequence through the follower answers the first offset.
    let mut c = cluster.client(follower, "root").await;
    let req = || proglog_proto::ProduceRequest {
        record: Some(proglog_proto::Record {
            value: b"once"[..].into(),
            ..Default::default()
        }),
        producer_id: "p1".into(),
        sequence: 7,
    };
    let first = c.rpc().produce(req()).await.unwrap().into_inner().offset;
    let again = c.rpc().produce(req()).await.unwrap().into_inner().offset;
    assert_eq!(first, again);
    let next = c.produce("next").await.unwrap();
    assert_eq!(next, first + 1, "the retry appended nothing");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_with_every_acked_record() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let mut values = Vec::new();
    let mut c = cluster.client(leader, "root").await;
    for j in 0..20 {
        let value = format!("before {j}").into_bytes();
        assert_eq!(c.produce(value.clone()).await.unwrap(), values.len() as u64);
        values.push(value);
    }
    cluster.agents[leader]
        .take()
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    let new = cluster.leader().await;
    assert_ne!(new, leader);
    let survivor = (0..3).find(|&i| i != leader && i != new).unwrap();
    let mut c = cluster.client(survivor, "root").await;
    for j in 0..5 {
        let value = format!("after {j}").into_bytes();
        assert_eq!(c.produce(value.clone()).await.unwrap(), values.len() as u64);
        values.push(value);
    }
    for i in [new, survivor] {
        cluster.wait_records(i, &values).await;
    }
    // The old leader restarts on its data and catches up.
    let agent = Agent::start(cluster.configs[leader].clone(), None)
        .await
        .unwrap();
    cluster.agents[leader] = Some(agent);
    cluster.wait_records(leader, &values).await;
    cluster.shutdown().await;
}

/// Dials the Raft path (`0x01`, then TLS) with the certificate of file
/// stem `stem` (`server`, `nobody-client`) and asks for a vote; returns
/// whether the call got an answer.
async fn raft_call_as(cluster: &Cluster, i: usize, stem: &str) -> bool {
    let certs = cluster.certs();
    let chain = load_certs(&certs.join(format!("{stem}.pem"))).unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_file(certs.join(format!("{stem}-key.pem")))
            .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in load_certs(&certs.join("ca.pem")).unwrap() {
        roots.add(ca).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let peer = tls::PeerTls {
        server: tls::server_config(
            &certs.join("server.pem"),
            &certs.join("server-key.pem"),
            &certs.join("ca.pem"),
        )
        .unwrap(),
        client: Arc::new(config),
        names: ["server".to_string()].into(),
    };
    let network = super::PeerNetwork::new(Arc::new(arc_swap::ArcSwap::from_pointee(peer)));
    let mut client = network
        .client(&cluster.agent(i).rpc_addr().to_string())
        .unwrap();
    let vote = openraft::raft::VoteRequest::<u64>::new(openraft::Vote::new(0, 1), None);
    let request = proglog_proto::raft::Payload {
        data: crate::raft::codec::encode_msg(&vote).into(),
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), client.vote(request)).await;
    matches!(answer, Ok(Ok(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_peer_certificates_open_the_raft_path() {
    let cluster = Cluster::start(1).await;
    // The server certificate (CN "server", the node's own peer CN) gets
    // an answer; `nobody`'s, from the same CA, is refused before any call.
    assert!(raft_call_as(&cluster, 0, "server").await);
    assert!(!raft_call_as(&cluster, 0, "nobody-client").await);
    // TLS without a client certificate after the Raft byte: nothing.
    let addr = cluster.agent(0).rpc_addr();
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(&[super::RAFT_RPC]).await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in load_certs(&cluster.certs().join("ca.pem")).unwrap() {
        roots.add(ca).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let handshake = tokio::time::timeout(Duration::from_secs(10), async {
        let mut stream = connector.connect(name, sock).await?;
        // TLS 1.3 reports a refused client certificate on first use.
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await?;
        let mut buf = [0u8; 16];
        tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await
    })
    .await
    .expect("the server answered or closed");
    assert!(
        !matches!(handshake, Ok(n) if n > 0),
        "a client without a certificate got bytes back: {handshake:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_names_and_certificates_reload_without_a_restart() {
    let cluster = Cluster::start(1).await;
    assert!(!raft_call_as(&cluster, 0, "nobody-client").await);
    let config = Config {
        peer_names: vec!["nobody".into()],
        ..cluster.configs[0].clone()
    };
    let errors = cluster.agent(0).reload(Some(config)).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(raft_call_as(&cluster, 0, "nobody-client").await);
    // A broken peer key keeps the previous peer TLS in force.
    let broken = cluster.dir.path().join("broken.pem");
    std::fs::write(&broken, "not a key").unwrap();
    let config = Config {
        peer_tls_cert_file: Some(cluster.certs().join("server.pem")),
        peer_tls_key_file: Some(broken),
        peer_tls_ca_file: Some(cluster.certs().join("ca.pem")),
        ..cluster.configs[0].clone()
    };
    let errors = cluster.agent(0).reload(Some(config)).await;
    assert!(
        errors.iter().any(|e| e.contains("broken.pem")),
        "the error names the file: {errors:?}"
    );
    assert!(raft_call_as(&cluster, 0, "server").await);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_stops_receiving_and_followers_point_admins_at_the_leader() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let removed = (0..3).find(|&i| i != leader && i != follower).unwrap();
    let name = format!("node{removed}");
    // A follower refuses and names the leader's address.
    let refused = cluster
        .client(follower, "root")
        .await
        .remove_server(&name)
        .await;
    assert_eq!(
        proglog_client::leader_addr(refused.as_ref().unwrap_err()),
        Some(cluster.agent(leader).rpc_addr().to_string())
    );
    let mut c = cluster.client(leader, "root").await;
    assert_eq!(c.produce("before").await.unwrap(), 0);
    cluster.wait_records(removed, &[b"before".to_vec()]).await;
    c.remove_server(&name).await.unwrap();
    for i in [leader, follower] {
        cluster.wait_members(i, 2).await;
    }
    let status = c.cluster_status().await.unwrap();
    assert!(status.members.iter().all(|m| m.name != name), "{status:?}");
    // New records reach the remaining follower, never the removed node.
    assert_eq!(c.produce("after").await.unwrap(), 1);
    let both = [b"before".to_vec(), b"after".to_vec()];
    cluster.wait_records(follower, &both).await;
    let mut gone = cluster.client(removed, "root").await;
    for _ in 0..10 {
        assert_eq!(code(gone.consume(1).await), Code::OutOfRange);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.shutdown().await;
}

/// Every record of node `i`'s state machine from offset 0, read on a
/// blocking thread.
async fn records_of(cluster: &Cluster, i: usize) -> Vec<Bytes> {
    let sm = cluster.agent(i).node().state_machine().clone();
    tokio::task::spawn_blocking(move || {
        (sm.lowest_offset()..sm.next_offset())
            .map(|o| sm.read(o).unwrap())
            .collect()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_purge_is_caught_up_by_a_snapshot_of_only_what_it_lacks() {
    // Snapshots often, so that the follower keeps its sealed segments
    // across its restart (it replays only what follows its snapshot).
    let mut cluster = Cluster::start_with(3, |c| Config {
        snapshot_threshold: 50,
        segment_max_store_bytes: 64 << 10,
        ..c
    })
    .await;
    let leader = cluster.leader().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let mut c = cluster.client(leader, "root").await;
    // About 2 MB in ~32 sealed segments, which the follower receives.
    let mut values = Vec::new();
    for b in 0..100 {
        let batch: Vec<Vec<u8>> = (0..20)
            .map(|j| format!("batch {b} record {j} ").repeat(50).into_bytes())
            .collect();
        assert_eq!(
            c.produce_batch(batch.clone()).await.unwrap(),
            values.len() as u64
        );
        values.extend(batch);
    }
    let mut fc = cluster.client(follower, "root").await;
    let last = values.len() as u64 - 1;
    eventually("the follower to hold the first records", async || {
        fc.consume(last).await.is_ok()
    })
    .await;
    let stopped_at = cluster
        .agent(follower)
        .node()
        .raft_metrics()
        .last_log_index
        .unwrap();
    cluster.agents[follower]
        .take()
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    // Small records, one entry each, until the leader has purged its Raft
    // log past what the follower holds: only a snapshot can catch it up.
    let purged_past = |cluster: &Cluster| {
        let metrics = cluster.agent(leader).node().raft_metrics();
        metrics.purged.is_some_and(|p| p.index > stopped_at)
    };
    let mut more = 0;
    while !purged_past(&cluster) {
        assert!(more < 5000, "the leader never purged past {stopped_at}");
        let value = format!("after {more}").into_bytes();
        assert_eq!(c.produce(value.clone()).await.unwrap(), values.len() as u64);
        values.push(value);
        more += 1;
    }
    // One of the follower's sealed segments is damaged on disk: it is
    // offered, but its bytes no longer match, so the leader must send
    // that file's bytes as they are.
    let data_dir = cluster.configs[follower].data_dir.join("sm/data");
    let mut stores: Vec<_> = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "store"))
        .collect();
    stores.sort();
    assert!(stores.len() > 10, "many segments: {stores:?}");
    let damaged = &stores[stores.len() / 2];
    let mut bytes = std::fs::read(damaged).unwrap();
    // Inside its first record's payload (files are preallocated: their
    // tails are zeros past the records).
    bytes[100] ^= 0xff;
    std::fs::write(damaged, bytes).unwrap();

    let network = cluster.agent(leader).peer_network().unwrap().clone();
    let before = network.snapshot_stats();
    assert_eq!(before.chunks, 0, "no snapshot was sent yet: {before:?}");

    let agent = Agent::start(cluster.configs[follower].clone(), None)
        .await
        .unwrap();
    cluster.agents[follower] = Some(agent);
    let mut fc = cluster.client(follower, "root").await;
    let last = values.len() as u64 - 1;
    eventually("the restarted follower to catch up", async || {
        fc.consume(last).await.is_ok()
    })
    .await;
    let installed = cluster.agent(follower).node().raft_metrics().snapshot;
    assert!(
        installed.is_some_and(|s| s.index > stopped_at),
        "caught up through a snapshot: {installed:?}"
    );
    assert_eq!(records_of(&cluster, follower).await, values);
    assert_eq!(records_of(&cluster, leader).await, values);

    let stats = network.snapshot_stats();
    eprintln!("snapshot sent to the lagging follower: {stats:?}");
    assert!(stats.chunks > 0 && stats.referenced_bytes > 0, "{stats:?}");
    assert!(
        stats.stale > 0,
        "the damaged file was found stale: {stats:?}"
    );
    assert!(
        stats.literal_bytes < stats.pack_bytes / 2,
        "most of the pack traveled as references: {stats:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_named_node_over_the_peer_service() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let target = (0..3).find(|&i| i != leader).unwrap();
    let mut c = cluster.client(leader, "root").await;
    assert_eq!(c.produce("before").await.unwrap(), 0);
    // Asked on a follower: the CLI would retry at the leader; the client
    // call itself names the leader.
    let refused = cluster
        .client(target, "root")
        .await
        .transfer_leadership(Some(&format!("node{target}")))
        .await;
    assert!(proglog_client::leader_addr(refused.as_ref().unwrap_err()).is_some());
    let new = c
        .transfer_leadership(Some(&format!("node{target}")))
        .await
        .unwrap();
    assert_eq!(new, cluster.agent(target).node().id());
    assert_eq!(cluster.leader().await, target);
    let mut c = cluster.client(target, "root").await;
    assert_eq!(c.produce("after").await.unwrap(), 1);
    for i in 0..3 {
        cluster
            .wait_records(i, &[b"before".to_vec(), b"after".to_vec()])
            .await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_of_the_leader_hands_leadership_on_then_leaves_with_leave_on_terminate() {
    let mut cluster = Cluster::start_with(3, |c| Config {
        leave_on_terminate: true,
        ..c
    })
    .await;
    let leader = cluster.leader().await;
    let old = cluster.agent(leader).node().id();
    let agent = cluster.agents[leader].take().unwrap();
    agent.terminate().await.unwrap();
    // By the time terminate returns, a survivor leads (the hand-off, not
    // an election after a timeout) and has removed the old leader.
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let leaders: Vec<Option<u64>> = survivors
        .iter()
        .map(|&i| cluster.agent(i).node().status().leader)
        .collect();
    assert!(
        leaders.iter().any(|l| l.is_some_and(|l| l != old)),
        "a survivor leads at once: {leaders:?}"
    );
    for &i in &survivors {
        cluster.wait_members(i, 2).await;
    }
    cluster.shutdown().await;
}

//! Server tests over real TLS and sockets: the book's server tests, the
//! security edges, limits, streams and reload.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proglog_client::{retained_range, Bytes, Client, Error, Target, Tls};
use proglog_proto::{ProduceBatchRequest, ProduceRequest, Record};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::Code;

use std::sync::Arc;

use tonic_health::pb::health_check_response::ServingStatus;

use crate::agent::Agent;
use crate::config::Config;
use crate::log::fs::{Faults, FileSystem, RealFs, SimFs};

/// One agent on 127.0.0.1:0 with fresh certs and an editable ACL.
pub(super) struct Node {
    pub(super) agent: Agent,
    dir: tempfile::TempDir,
    config: Config,
}

impl Node {
    pub(super) async fn start(customize: impl FnOnce(&mut Config)) -> Node {
        Node::start_on(Arc::new(RealFs), customize).await
    }

    /// An agent whose WAL files live on `fs`.
    async fn start_on(fs: Arc<dyn FileSystem>, customize: impl FnOnce(&mut Config)) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        crate::certs::generate(&certs, &["127.0.0.1".into(), "localhost".into()]).unwrap();
        let acl = dir.path().join("acl");
        std::fs::create_dir(&acl).unwrap();
        std::fs::write(
            acl.join("model.conf"),
            include_str!("../../../config/model.conf"),
        )
        .unwrap();
        std::fs::write(
            acl.join("policy.csv"),
            include_str!("../../../config/policy.csv"),
        )
        .unwrap();
        let mut config = Config {
            data_dir: dir.path().join("data"),
            node_name: "test-node".into(),
            // Gossip on a port of its own: tests run in parallel.
            bind_addr: "127.0.0.1:0".parse().unwrap(),
            rpc_port: 0,
            bootstrap: true,
            acl_model_file: Some(acl.join("model.conf")),
            acl_policy_file: Some(acl.join("policy.csv")),
            server_tls_cert_file: Some(certs.join("server.pem")),
            server_tls_key_file: Some(certs.join("server-key.pem")),
            server_tls_ca_file: Some(certs.join("ca.pem")),
            ..Config::default()
        };
        customize(&mut config);
        config.validate().unwrap();
        // Files outside the WAL (snapshots, ids) stay on the real disk, in
        // directories the simulated one does not make.
        std::fs::create_dir_all(config.data_dir.join("raft")).unwrap();
        let agent = Agent::start_on(config.clone(), None, fs).await.unwrap();
        Node { agent, dir, config }
    }

    /// Stops the agent cleanly and starts it again on the same data.
    async fn restart(self) -> Node {
        self.agent.shutdown().await.unwrap();
        let agent = Agent::start(self.config.clone(), None).await.unwrap();
        Node { agent, ..self }
    }

    pub(super) fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub(super) fn tls(&self, user: &str) -> Tls {
        let c = self.certs();
        Tls::from_files(
            &c.join("ca.pem"),
            &c.join(format!("{user}-client.pem")),
            &c.join(format!("{user}-client-key.pem")),
        )
        .unwrap()
    }

    pub(super) async fn client(&self, user: &str) -> Client {
        self.connect(Some(self.tls(user))).await.unwrap()
    }

    pub(super) async fn connect(&self, tls: Option<Tls>) -> Result<Client, Error> {
        Client::connect(Target::Tcp {
            addr: self.agent.rpc_addr().to_string(),
            tls,
        })
        .await
    }
}

pub(super) fn code<T: std::fmt::Debug>(r: Result<T, Error>) -> Code {
    match r {
        Err(Error::Status(s)) => s.code(),
        other => panic!("expected a status, got {other:?}"),
    }
}

/// Polls `check` until it returns true or the deadline passes.
pub(super) async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn produce_then_consume_returns_the_record() {
    let node = Node::start(|_| {}).await;
    let mut c = node.client("root").await;
    assert_eq!(c.produce("hello world").await.unwrap(), 0);
    assert_eq!(c.produce("second").await.unwrap(), 1);
    assert_eq!(c.consume(0).await.unwrap(), &b"hello world"[..]);
    assert_eq!(c.consume(1).await.unwrap(), &b"second"[..]);
}

#[tokio::test]
async fn consume_past_the_end_is_out_of_range() {
    let node = Node::start(|_| {}).await;
    let mut c = node.client("root").await;
    c.produce("x").await.unwrap();
    match c.consume(1).await {
        Err(Error::Status(s)) => {
            assert_eq!(s.code(), Code::OutOfRange);
            assert_eq!(
                s.message(),
                "offset 1 is past the end of the log (next offset 1)"
            );
        }
        other => panic!("expected OUT_OF_RANGE, got {other:?}"),
    }
    assert_eq!(code(c.consume(u64::MAX).await), Code::OutOfRange);
}

#[tokio::test]
async fn produce_stream_and_consume_stream_keep_order() {
    let node = Node::start(|_| {}).await;
    let mut c = node.client("root").await;
    let values: Vec<Bytes> = (0..20u8)
        .map(|i| vec![b'a' + i; 1 + i as usize].into())
        .collect();
    let mut replies = produce_stream(&mut c, values.clone()).await;
    for expected in 0..20u64 {
        assert_eq!(replies.next().await.unwrap().unwrap().offset, expected);
    }
    let mut stream = c.consume_stream(0).await.unwrap();
    for (i, value) in values.iter().enumerate() {
        let (offset, got) = stream.next().await.unwrap().unwrap();
        assert_eq!((offset, &got), (i as u64, value));
    }
    // At the end the stream waits and is woken by the next append.
    let mut producer = node.client("root").await;
    producer.produce("late").await.unwrap();
    let (offset, got) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("stream woke up")
        .unwrap()
        .unwrap();
    assert_eq!((offset, &got[..]), (20, &b"late"[..]));
}

#[tokio::test]
async fn consume_stream_crosses_read_batches_by_count_and_by_bytes() {
    let node = Node::start(|_| {}).await;
    let mut c = node.client("root").await;
    // Small records: more than one read batch by count; then records of
    // 300 KiB: a batch by bytes holds four of them.
    let mut values: Vec<Vec<u8>> = (0..600u32).map(|i| i.to_le_bytes().to_vec()).collect();
    values.extend((0..9u8).map(|i| vec![i; 300 << 10]));
    c.produce_batch(values[..600].to_vec()).await.unwrap();
    c.produce_batch(values[600..].to_vec()).await.unwrap();
    let mut stream = c.consume_stream(0).await.unwrap();
    for (i, value) in values.iter().enumerate() {
        let (offset, got) = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("stream delivered")
            .unwrap()
            .unwrap();
        assert_eq!(offset, i as u64);
        assert!(got == value, "record {i} differs");
    }
    assert_eq!(c.consume(604).await.unwrap(), values[604]);
}

#[tokio::test]
async fn nobody_is_denied_produce_and_consume() {
    let node = Node::start(|_| {}).await;
    node.client("root").await.produce("x").await.unwrap();
    let mut c = node.client("nobody").await;
    assert_eq!(code(c.produce("x").await), Code::PermissionDenied);
    assert_eq!(code(c.consume(0).await), Code::PermissionDenied);
    assert_eq!(
        code(c.produce_batch(vec![Bytes::from_static(b"x")]).await),
        Code::PermissionDenied
    );
    let stream = c.consume_stream(0).await;
    assert_eq!(code(stream.map(|_| ())), Code::PermissionDenied);
}

#[tokio::test]
async fn clients_without_a_valid_certificate_are_rejected() {
    let node = Node::start(|_| {}).await;
    // Plaintext to the TLS port.
    let plain = async { node.connect(None).await?.produce("x").await };
    assert!(plain.await.is_err());
    // TLS without a client certificate: the handshake fails.
    let no_cert = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(
            std::fs::read(node.certs().join("ca.pem")).unwrap(),
        ),
    );
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://{}", node.agent.rpc_addr()))
            .unwrap()
            .tls_config(no_cert)
            .unwrap()
            .connect()
            .await;
    if let Ok(channel) = channel {
        let mut rpc = proglog_proto::log_client::LogClient::new(channel);
        assert!(rpc
            .consume(proglog_proto::ConsumeRequest { offset: 0 })
            .await
            .is_err());
    }
    // A certificate from another CA.
    let foreign = node.dir.path().join("foreign");
    crate::certs::generate(&foreign, &["127.0.0.1".into()]).unwrap();
    let tls = Tls::from_files(
        &node.certs().join("ca.pem"),
        &foreign.join("root-client.pem"),
        &foreign.join("root-client-key.pem"),
    )
    .unwrap();
    let forged = async { node.connect(Some(tls)).await?.produce("x").await };
    assert!(forged.await.is_err());
    // The server still serves proper clients.
    assert_eq!(node.client("root").await.produce("ok").await.unwrap(), 0);
}

#[tokio::test]
async fn unix_socket_serves_without_tls_as_its_subject() {
    let socket = tempfile::tempdir().unwrap();
    let path = socket.path().join("proglog.sock");
    let node = Node::start(|c| {
        c.unix_socket = Some(path.clone());
        c.unix_socket_subject = Some("root".into());
    })
    .await;
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660);
    let mut c = Client::connect(Target::Unix(path.clone())).await.unwrap();
    assert_eq!(c.produce("via unix").await.unwrap(), 0);
    assert_eq!(
        node.client("root").await.consume(0).await.unwrap(),
        &b"via unix"[..]
    );
    // The cluster client in its Unix socket mode: the one agent.
    let cluster =
        proglog_client::ClusterClient::connect(proglog_client::ClusterConfig::unix(&path))
            .await
            .unwrap();
    assert_eq!(cluster.produce("cluster client").await.unwrap(), 1);
    assert_eq!(cluster.consume(1).await.unwrap(), &b"cluster client"[..]);
    assert_eq!(cluster.servers().len(), 1);

    let denied_path = socket.path().join("nobody.sock");
    let other = Node::start(|c| {
        c.unix_socket = Some(denied_path.clone());
        c.unix_socket_subject = Some("nobody".into());
    })
    .await;
    let mut c = Client::connect(Target::Unix(denied_path)).await.unwrap();
    assert_eq!(code(c.produce("x").await), Code::PermissionDenied);
    drop(other);
}

/// Connects to the Unix socket at `path`, sends nothing, and checks that the
/// agent closes the connection without serving it: EOF (or a reset), not
/// the HTTP/2 SETTINGS a served connection gets.
async fn closed_unserved(path: &Path, what: &str) {
    let mut stream = tokio::net::UnixStream::connect(path).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut stream, &mut byte),
    )
    .await
    .unwrap_or_else(|_| panic!("{what} stayed open"));
    assert!(matches!(closed, Ok(0) | Err(_)), "{what}: {closed:?}");
}

/// The Unix socket has its own `max_connections` places: while they are
/// all held a new connection is closed at once, and a place given back is
/// taken by the next client.
#[tokio::test]
async fn unix_socket_connections_past_max_connections_are_closed() {
    let socket = tempfile::tempdir().unwrap();
    let path = socket.path().join("proglog.sock");
    let node = Node::start(|c| {
        c.unix_socket = Some(path.clone());
        c.unix_socket_subject = Some("root".into());
        c.max_connections = 2;
    })
    .await;
    let connect = || async { Client::connect(Target::Unix(path.clone())).await };
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = connect().await.unwrap();
        c.servers().await.unwrap();
        held.push(c);
    }
    closed_unserved(&path, "a third connection").await;
    // TCP clients are not counted against the socket's places.
    node.client("root").await.servers().await.unwrap();
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = connect().await {
            if c.servers().await.is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "a freed place was never taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Unix socket connection that sends nothing holds its place only for
/// `first_byte_timeout`, as on TCP.
#[tokio::test]
async fn a_silent_unix_socket_connection_is_closed_and_gives_back_its_place() {
    let socket = tempfile::tempdir().unwrap();
    let path = socket.path().join("proglog.sock");
    let _node = Node::start(|c| {
        c.unix_socket = Some(path.clone());
        c.unix_socket_subject = Some("root".into());
        c.max_connections = 1;
        c.first_byte_timeout = "300ms".into();
    })
    .await;
    // Holds the one place and sends nothing: closed after the timeout.
    closed_unserved(&path, "a silent connection").await;
    // Its place is free: a client gets in and is served.
    let mut c = Client::connect(Target::Unix(path.clone())).await.unwrap();
    assert_eq!(c.produce("after").await.unwrap(), 0);
}

#[tokio::test]
async fn record_limits_empty_records_and_batches() {
    let node = Node::start(|c| c.max_record_bytes = 1000).await;
    let mut c = node.client("root").await;
    assert_eq!(
        code(c.produce(vec![0u8; 1001]).await),
        Code::ResourceExhausted
    );
    assert_eq!(
        code(c.produce_batch(vec![vec![1], vec![0u8; 1001]]).await),
        Code::ResourceExhausted
    );
    assert_eq!(c.produce(vec![0u8; 1000]).await.unwrap(), 0);
    assert_eq!(c.produce(Vec::new()).await.unwrap(), 1);
    assert_eq!(c.consume(1).await.unwrap(), &b""[..]);
    let empty = c
        .rpc()
        .produce_batch(ProduceBatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((empty.first_offset, empty.count), (2, 0));
    let first = c
        .produce_batch(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
        .await
        .unwrap();
    assert_eq!(first, 2);
    assert_eq!(c.consume(4).await.unwrap(), &b"c"[..]);
    let missing = c.rpc().produce(ProduceRequest::default()).await;
    assert_eq!(missing.unwrap_err().code(), Code::InvalidArgument);
    // In a stream, the oversized record fails in its turn, after the good one.
    let mut replies =
        produce_stream(&mut c, vec![vec![1u8; 10].into(), vec![2u8; 1001].into()]).await;
    assert_eq!(replies.next().await.unwrap().unwrap().offset, 5);
    assert_eq!(
        replies.next().await.unwrap().unwrap_err().code(),
        Code::ResourceExhausted
    );
}

#[tokio::test]
async fn garbage_and_silent_connections_do_not_disturb_serving() {
    let node = Node::start(|_| {}).await;
    let addr = node.agent.rpc_addr();
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    for first in [0x00u8, 0x01, 0x16, b'G'] {
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut junk = vec![first];
        junk.extend((0..4096u32).map(|i| (i * 7919 % 251) as u8));
        let _ = sock.write_all(&junk).await;
        drop(sock);
    }
    let mut c = node.client("root").await;
    assert_eq!(c.produce("still here").await.unwrap(), 0);
    assert_eq!(c.servers().await.unwrap()[0].id, "test-node");
}

#[tokio::test]
async fn get_servers_lists_this_node_as_leader() {
    let node = Node::start(|_| {}).await;
    let mut c = node.client("root").await;
    // The one-node cluster elects itself shortly after start.
    eventually("a leader in GetServers", async || {
        c.servers().await.unwrap().iter().any(|s| s.is_leader)
    })
    .await;
    let servers = c.servers().await.unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].id, "test-node");
    assert_eq!(servers[0].rpc_addr, node.agent.rpc_addr().to_string());
}

/// The health status of `service` ("" for the whole server).
async fn health(node: &Node, service: &str) -> ServingStatus {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(node.certs().join("ca.pem")).unwrap(),
        ))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(node.certs().join("root-client.pem")).unwrap(),
            std::fs::read(node.certs().join("root-client-key.pem")).unwrap(),
        ));
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://{}", node.agent.rpc_addr()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

#[tokio::test]
async fn health_service_reports_serving() {
    let node = Node::start(|_| {}).await;
    assert_eq!(health(&node, "log.v1.Log").await, ServingStatus::Serving);
    assert_eq!(health(&node, "").await, ServingStatus::Serving);
}

#[tokio::test]
async fn after_a_failed_sync_produce_fails_without_hanging_and_health_is_not_serving() {
    let disk = SimFs::new();
    let node = Node::start_on(Arc::new(disk.clone()), |c| {
        c.produce_timeout = "3s".into();
    })
    .await;
    let mut c = node.client("root").await;
    assert_eq!(c.produce("before").await.unwrap(), 0);
    assert_eq!(health(&node, "log.v1.Log").await, ServingStatus::Serving);

    disk.set_faults(Faults {
        sync: true,
        ..Faults::default()
    });
    let after = tokio::time::timeout(Duration::from_secs(20), c.produce("after"))
        .await
        .expect("produce answered instead of hanging");
    assert!(
        matches!(code(after), Code::Unavailable | Code::Internal),
        "a failed sync is an error"
    );
    for service in ["log.v1.Log", ""] {
        eventually("NOT_SERVING", async || {
            health(&node, service).await == ServingStatus::NotServing
        })
        .await;
    }
    // For good: the next produce is refused at once, not after its timeout.
    let started = Instant::now();
    let again = tokio::time::timeout(Duration::from_secs(20), c.produce("again"))
        .await
        .expect("produce answered instead of hanging");
    assert_eq!(code(again), Code::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused before produce_timeout: {:?}",
        started.elapsed()
    );
    // Records acknowledged before the fault stay readable.
    assert_eq!(c.consume(0).await.unwrap(), &b"before"[..]);
}

#[tokio::test]
async fn produce_without_a_cluster_is_unavailable_after_produce_timeout() {
    let node = Node::start(|c| {
        c.bootstrap = false;
        c.produce_timeout = "300ms".into();
    })
    .await;
    let mut c = node.client("root").await;
    let answer = tokio::time::timeout(Duration::from_secs(20), c.produce("x"))
        .await
        .expect("produce answered by its deadline");
    assert_eq!(code(answer), Code::Unavailable);
    let batch = tokio::time::timeout(
        Duration::from_secs(20),
        c.produce_batch(vec![Bytes::from_static(b"y")]),
    )
    .await
    .expect("produce answered by its deadline");
    assert_eq!(code(batch), Code::Unavailable);
}

#[tokio::test]
async fn abandoned_streams_leave_no_task_behind() {
    let node = Node::start(|_| {}).await;
    let mut c = node.client("root").await;
    c.produce("x").await.unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut s = c.consume_stream(0).await.unwrap();
        s.next().await.unwrap().unwrap(); // now waiting at the end of the log
        streams.push(s);
    }
    assert!(metrics.num_alive_tasks() > baseline);
    drop(streams);
    eventually("stream tasks to end", async || {
        metrics.num_alive_tasks() <= baseline
    })
    .await;
}

#[tokio::test]
async fn live_acl_edit_applies_to_new_calls() {
    let node = Node::start(|_| {}).await;
    let mut nobody = node.client("nobody").await;
    assert_eq!(code(nobody.produce("x").await), Code::PermissionDenied);
    let policy = node.dir.path().join("acl/policy.csv");
    replace(
        &policy,
        "p, root, *, produce\np, root, *, consume\np, nobody, *, produce\n",
    );
    assert!(node.agent.reload(None).await.is_empty());
    assert_eq!(nobody.produce("now allowed").await.unwrap(), 0);
    // A broken policy keeps the old one.
    std::fs::remove_file(&policy).unwrap();
    assert!(!node.agent.reload(None).await.is_empty());
    assert_eq!(nobody.produce("still allowed").await.unwrap(), 1);
    // Revoked: the decision remembered under the old policy goes with it.
    replace(&policy, "p, root, *, produce\np, root, *, consume\n");
    assert!(node.agent.reload(None).await.is_empty());
    assert_eq!(
        code(nobody.produce("revoked").await),
        Code::PermissionDenied
    );
    let mut root = node.client("root").await;
    assert_eq!(root.produce("root still may").await.unwrap(), 2);
}

#[tokio::test]
async fn rotated_server_certs_apply_to_new_connections_while_old_streams_flow() {
    let node = Node::start(|_| {}).await;
    let mut old = node.client("root").await;
    old.produce("before").await.unwrap();
    let mut stream = old.consume_stream(0).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().1, &b"before"[..]);

    // Rotate to a new CA: server cert, key and client CA.
    let fresh = node.dir.path().join("fresh");
    crate::certs::generate(&fresh, &["127.0.0.1".into()]).unwrap();
    for name in ["server.pem", "server-key.pem", "ca.pem"] {
        replace(
            &node.certs().join(name),
            &std::fs::read_to_string(fresh.join(name)).unwrap(),
        );
    }
    assert!(node.agent.reload(None).await.is_empty());

    // New connections need the new CA on both sides.
    let new_tls = Tls::from_files(
        &fresh.join("ca.pem"),
        &fresh.join("root-client.pem"),
        &fresh.join("root-client-key.pem"),
    )
    .unwrap();
    let mut new = node.connect(Some(new_tls)).await.unwrap();
    assert_eq!(new.produce("after").await.unwrap(), 1);
    let stale = async {
        let mut c = node.connect(Some(node.tls("root"))).await?;
        c.produce("x").await
    };
    assert!(
        stale.await.is_err(),
        "a client of the old CA must not get in"
    );
    // The stream opened before the rotation keeps flowing.
    let (offset, value) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((offset, &value[..]), (1, &b"after"[..]));
}

#[tokio::test]
async fn a_retried_producer_sequence_appends_once_also_after_a_restart() {
    let node = Node::start(|_| {}).await;
    let mut c = node.client("root").await;
    let request = |seq: u64, value: &[u8]| ProduceRequest {
        record: Some(Record {
            value: Bytes::copy_from_slice(value),
            ..Record::default()
        }),
        producer_id: "app-1".into(),
        sequence: seq,
    };
    c.produce("other").await.unwrap();
    let first = c
        .rpc()
        .produce(request(7, b"once"))
        .await
        .unwrap()
        .into_inner();
    let retry = c
        .rpc()
        .produce(request(7, b"once"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.offset, retry.offset), (1, 1));
    let batch = ProduceBatchRequest {
        records: vec![Record::default(), Record::default()],
        producer_id: "app-1".into(),
        sequence: 8,
    };
    let b1 = c
        .rpc()
        .produce_batch(batch.clone())
        .await
        .unwrap()
        .into_inner();
    let b2 = c.rpc().produce_batch(batch).await.unwrap().into_inner();
    assert_eq!((b1.first_offset, b1.count), (2, 2));
    assert_eq!((b2.first_offset, b2.count), (2, 2));
    for seq in 9..9 + crate::raft::producers::WINDOW as u64 {
        c.rpc().produce(request(seq, b"more")).await.unwrap();
    }
    let stale = c.rpc().produce(request(7, b"once")).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);

    let node = node.restart().await;
    let mut c = node.client("root").await;
    let again = c
        .rpc()
        .produce(request(9, b"more"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.offset, 4, "the producer table survived the restart");
    let next = c.produce("fresh").await.unwrap();
    assert_eq!(next, 4 + crate::raft::producers::WINDOW as u64);
}

/// The message and the `(lowest, next)` metadata of an OUT_OF_RANGE.
fn out_of_range<T: std::fmt::Debug>(r: Result<T, Error>) -> (String, u64, u64) {
    let e = match r {
        Err(e @ Error::Status(_)) => e,
        other => panic!("expected OUT_OF_RANGE, got {other:?}"),
    };
    let Error::Status(s) = &e else { unreachable!() };
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    let (lowest, next) = retained_range(&e).unwrap_or_else(|| panic!("no range in {s:?}"));
    (s.message().to_string(), lowest, next)
}

#[tokio::test]
async fn retention_drops_old_records_and_reads_below_get_out_of_range() {
    let node = Node::start(|c| {
        c.segment_max_store_bytes = 1024;
        c.retention_bytes = 3000;
    })
    .await;
    let mut c = node.client("root").await;
    for i in 0..100u32 {
        c.produce(format!("record-{i:04}-{}", "x".repeat(80)))
            .await
            .unwrap();
    }
    eventually("retention to drop offset 0", async || {
        matches!(c.consume(0).await, Err(Error::Status(s)) if s.code() == Code::OutOfRange)
    })
    .await;
    let newest = c.consume(99).await.unwrap();
    assert!(newest.starts_with(b"record-0099"));
    // Below the lowest offset: the message says retention removed it and
    // where the log starts; the metadata has the same numbers.
    let (message, lowest, next) = out_of_range(c.consume(0).await);
    assert!(lowest > 0 && lowest < 99, "lowest {lowest}");
    assert_eq!(next, 100);
    assert_eq!(
        message,
        format!("offset 0 was removed by retention: the log starts at offset {lowest}")
    );
    // Past the end: the message says so and names the next offset.
    let (message, past_lowest, next) = out_of_range(c.consume(100).await);
    assert_eq!(
        message,
        "offset 100 is past the end of the log (next offset 100)"
    );
    assert!(past_lowest >= lowest && next == 100);
    let (message, _, _) = out_of_range(c.consume(u64::MAX).await);
    assert_eq!(
        message,
        format!(
            "offset {} is past the end of the log (next offset 100)",
            u64::MAX
        )
    );
    // Everything from the lowest offset on is still there, densely (the
    // retention loop may move the lowest offset on meanwhile: a read it
    // overtook must say so and name the new lowest offset).
    let mut o = lowest;
    while o < 100 {
        match c.consume(o).await {
            Ok(value) => assert!(value.starts_with(format!("record-{o:04}").as_bytes())),
            Err(e) => {
                let (message, moved, _) = out_of_range(Err::<(), _>(e));
                assert!(
                    moved > o,
                    "offset {o} unreadable but not removed: {message}"
                );
                o = moved;
                continue;
            }
        }
        o += 1;
    }
    // A stream that starts below the lowest offset ends with that status.
    let mut stream = c.consume_stream(0).await.unwrap();
    let first = stream.next().await.expect("the stream ends with a status");
    let (message, stream_lowest, next) = out_of_range(first);
    assert!(stream_lowest >= lowest && next == 100, "{message}");
    assert_eq!(
        message,
        format!("offset 0 was removed by retention: the log starts at offset {stream_lowest}")
    );
    assert!(stream.next().await.is_none(), "the stream ended");
    // One that starts at the end waits for the next record instead.
    let mut stream = c.consume_stream(100).await.unwrap();
    assert_eq!(c.produce("after").await.unwrap(), 100);
    let (offset, value) = stream.next().await.unwrap().unwrap();
    assert_eq!((offset, &value[..]), (100, &b"after"[..]));
}

#[tokio::test]
async fn snapshots_are_taken_at_the_threshold_and_restarts_keep_every_record() {
    let node = Node::start(|c| {
        c.snapshot_threshold = 20;
        c.segment_max_store_bytes = 1024;
    })
    .await;
    let mut c = node.client("root").await;
    for i in 0..100u32 {
        assert_eq!(c.produce(format!("r{i}")).await.unwrap(), u64::from(i));
    }
    let meta = node.config.data_dir.join("sm/snapshots/current/meta.json");
    eventually("a snapshot", async || meta.exists()).await;
    let node = node.restart().await;
    let mut c = node.client("root").await;
    eventually("the restarted node to serve offset 99", async || {
        c.consume(99).await.is_ok()
    })
    .await;
    for i in 0..100u64 {
        assert_eq!(c.consume(i).await.unwrap(), format!("r{i}").as_bytes());
    }
    assert_eq!(c.produce("next").await.unwrap(), 100);
}

/// Opens a ProduceStream sending one request per value.
async fn produce_stream(
    c: &mut Client,
    values: Vec<Bytes>,
) -> tonic::Streaming<proglog_proto::ProduceResponse> {
    let requests = values.into_iter().map(|value| ProduceRequest {
        record: Some(Record {
            value,
            ..Record::default()
        }),
        ..ProduceRequest::default()
    });
    c.rpc()
        .produce_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
}

/// Replaces a file by rename, as deployment tools do.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

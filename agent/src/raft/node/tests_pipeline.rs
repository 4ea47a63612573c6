//! Pipelined proposals: many producers at once, several entries in
//! flight; every answer must be the offsets its records were applied at,
//! offsets dense and unique, each producer's requests in its order, on one
//! node and on every node of a three-node cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use super::router::{read_range, wait_applied, Cluster, WAIT};
use super::*;

/// One acknowledged append.
#[derive(Debug, Clone)]
struct Acked {
    producer: String,
    sequence: u64,
    records: Vec<Bytes>,
    first: u64,
    count: u64,
}

/// `producers` tasks, task `i` through `via[i % via.len()]`, each submits
/// `per` appends of 1 to 3 records with its producer id, each ordered
/// before the next is submitted but none awaited durable until all are
/// submitted (so a producer has many requests in flight).
async fn produce_concurrently(via: &[RaftNode], producers: usize, per: u64) -> Vec<Acked> {
    let mut tasks = Vec::new();
    for i in 0..producers {
        let node = via[i % via.len()].clone();
        tasks.push(tokio::spawn(async move {
            let producer = format!("p{i}");
            let mut pending = Vec::new();
            for sequence in 0..per {
                let records: Vec<Bytes> = (0..1 + sequence % 3)
                    .map(|k| Bytes::from(format!("{producer}-{sequence}-{k}")))
                    .collect();
                let ordered = node
                    .append(records.clone(), Some((producer.clone(), sequence)))
                    .await
                    .unwrap();
                pending.push((sequence, records, ordered));
            }
            let mut acked = Vec::new();
            for (sequence, records, durable) in pending {
                let (first, count) = durable.await.unwrap();
                acked.push(Acked {
                    producer: producer.clone(),
                    sequence,
                    records,
                    first,
                    count,
                });
            }
            acked
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// Checks the answers: dense unique offsets from `base`, each producer's
/// requests in submission order. Returns the offset after the last.
fn check_answers(acked: &[Acked], base: u64) -> u64 {
    let mut by_offset: Vec<&Acked> = acked.iter().collect();
    by_offset.sort_by_key(|a| a.first);
    let mut next = base;
    for a in &by_offset {
        assert_eq!(a.count, a.records.len() as u64, "{a:?}");
        assert_eq!(a.first, next, "offsets not dense and unique at {a:?}");
        next += a.count;
    }
    let mut last: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for a in acked {
        if let Some((sequence, first)) = last.get(a.producer.as_str()) {
            assert!(
                a.sequence > *sequence && a.first > *first,
                "{} out of order: {a:?}",
                a.producer
            );
        }
        last.insert(&a.producer, (a.sequence, a.first));
    }
    next
}

/// Checks that `node` holds each acknowledged request's records at its
/// answered offsets.
async fn check_reads(node: &RaftNode, acked: &[Acked], base: u64, end: u64) {
    wait_applied(node, end).await;
    let records = read_range(node, base, end).await;
    for a in acked {
        let at = (a.first - base) as usize;
        assert_eq!(
            records[at..at + a.count as usize],
            a.records[..],
            "node {} at {}: {a:?}",
            node.id(),
            a.first
        );
    }
}

/// Retries each producer's last request: answered with the first
/// attempt's offsets, nothing appended again.
async fn check_retries(via: &RaftNode, acked: &[Acked], end: u64) {
    let mut last: BTreeMap<&str, &Acked> = BTreeMap::new();
    for a in acked {
        last.insert(&a.producer, a);
    }
    for a in last.values() {
        let retried = via
            .append(a.records.clone(), Some((a.producer.clone(), a.sequence)))
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(retried, (a.first, a.count), "{a:?}");
    }
    assert_eq!(via.sm.next_offset(), end, "a retry appended again");
}

fn generous(settings: NodeSettings) -> NodeSettings {
    NodeSettings {
        produce_timeout: Duration::from_secs(60),
        ..settings
    }
}

#[tokio::test]
async fn one_node_answers_many_concurrent_producers_with_their_own_dense_offsets() {
    let cluster = Cluster::start(1, generous).await;
    let node = cluster.nodes[&1].clone();
    let acked = tokio::time::timeout(
        WAIT,
        produce_concurrently(std::slice::from_ref(&node), 24, 40),
    )
    .await
    .expect("produced in time");
    assert_eq!(acked.len(), 24 * 40);
    let end = check_answers(&acked, 0);
    check_reads(&node, &acked, 0, end).await;
    check_retries(&node, &acked, end).await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn an_idle_leader_submits_from_the_callers_task_and_a_closed_gate_queues() {
    let cluster = Cluster::start(1, generous).await;
    let node = cluster.nodes[&1].clone();
    let before = node.lane.direct_entries();
    let one = |value: &str| node.append(vec![Bytes::copy_from_slice(value.as_bytes())], None);
    assert_eq!(one("a").await.unwrap().await.unwrap(), (0, 1));
    assert_eq!(
        node.lane.direct_entries(),
        before + 1,
        "idle: submitted directly"
    );

    // A transfer holds the gate: the append waits in the queue, is ordered
    // there, and is answered once the gate opens.
    let closed = Arc::clone(&node.lane.gate).write_owned().await;
    let ordered = tokio::time::timeout(WAIT, one("b"))
        .await
        .expect("queued in time")
        .unwrap();
    let durable = tokio::spawn(ordered);
    // And while it is queued, another append queues behind it rather than
    // overtake it.
    let behind = tokio::spawn(
        tokio::time::timeout(WAIT, one("c"))
            .await
            .expect("queued in time")
            .unwrap(),
    );
    drop(closed);
    assert_eq!(durable.await.unwrap().unwrap(), (1, 1));
    assert_eq!(behind.await.unwrap().unwrap(), (2, 1));
    assert_eq!(node.lane.direct_entries(), before + 1);
    assert_eq!(read_range(&node, 0, 3).await, [&b"a"[..], b"b", b"c"]);
    cluster.shutdown().await;
}

#[tokio::test]
async fn three_nodes_answer_concurrent_producers_on_the_leader_and_through_followers_alike() {
    let cluster = Cluster::start(3, generous).await;
    let leader = cluster.leader_node();
    let followers: Vec<RaftNode> = cluster
        .nodes
        .values()
        .filter(|n| n.id() != leader.id())
        .cloned()
        .collect();
    let via = [
        leader.clone(),
        leader.clone(),
        leader.clone(),
        followers[0].clone(),
        followers[1].clone(),
    ];
    let acked = tokio::time::timeout(WAIT, produce_concurrently(&via, 20, 30))
        .await
        .expect("produced in time");
    assert_eq!(acked.len(), 20 * 30);
    let end = check_answers(&acked, 0);
    for node in cluster.nodes.values() {
        check_reads(node, &acked, 0, end).await;
    }
    check_retries(&followers[0], &acked, end).await;
    cluster.shutdown().await;
}

/// Throughput of a three-node cluster on the in-process router (no
/// sockets: the round trip is the follower's write and fsync), at 1, 16
/// and 64 requests in flight, 100-byte records, for comparing pipeline
/// depths. Not a test: run it in release with
/// `cargo test --release -p proglog-agent --lib measure_three_nodes -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_three_nodes() {
    let cluster = Cluster::start(3, generous).await;
    let leader = cluster.leader_node();
    for in_flight in [1usize, 16, 64] {
        let until = Instant::now() + Duration::from_secs(5);
        let mut tasks = Vec::new();
        for _ in 0..in_flight {
            let node = leader.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let started = Instant::now();
                    node.append(vec![vec![7; 100].into()], None)
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                    latencies.push(started.elapsed());
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        latencies.sort();
        eprintln!(
            "depth {MAX_IN_FLIGHT}, {in_flight} in flight: {:.0} records/s, p50 {:?}, p99 {:?}",
            latencies.len() as f64 / 5.0,
            latencies[latencies.len() / 2],
            latencies[latencies.len() * 99 / 100],
        );
    }
    cluster.shutdown().await;
}

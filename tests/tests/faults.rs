//! Fault campaigns against real `proglog` processes (the harness is
//! `proglog_tests::faults`; how to run a longer campaign is in
//! `tests/faults/README.md`):
//!
//! - crash loop: a producer writes continuously through the client crate
//!   while random nodes (the leader half the time) are SIGKILLed and
//!   restarted on their data dirs;
//! - partitions: each node in its own network namespace; the leader is
//!   unplugged, a minority is cut off, links flap, all heal;
//! - disk full: one node's data dir on a small tmpfs that fills up;
//! - torn tail: a stopped node's newest store files are cut mid-record.
//!
//! After each, every node holds every acknowledged record at its
//! acknowledged offset, offsets are dense and unique, no value appears
//! twice, and the nodes' logs are identical. Every loop is bounded in
//! count and time; seeds are printed (replay with `PROGLOG_FAULT_SEED`).

use std::time::{Duration, Instant};

use proglog_tests::faults::{
    agreed_leader, check_logs, env_or, is_root, newest_store, on_node, tear_last_entry, Netns,
    Producer, Rng, Tmpfs,
};
use proglog_tests::{client, eventually, ProcessCluster};

/// Flags of every node in these tests: small segments and frequent
/// snapshots, so restarts go through rotation, snapshots and replay. The
/// index is sized to its small store: an index reserves its whole size on
/// disk, and the default 8 MiB per segment would fill the disk-full test's
/// tmpfs by itself once the node catches up after its restart.
const FLAGS: [&str; 8] = [
    "--produce-timeout",
    "5s",
    "--segment-max-store-bytes",
    "65536",
    "--segment-max-index-bytes",
    "65536",
    "--snapshot-threshold",
    "1000",
];

/// How long the end-of-test check waits for the logs to converge.
const CONVERGE: Duration = Duration::from_secs(120);

/// Waits until node `i` serves the record at `offset` (it caught up at
/// least that far).
fn wait_caught_up(cluster: &ProcessCluster, i: usize, offset: u64) {
    eventually(
        &format!("node{i} to catch up to offset {offset}"),
        Duration::from_secs(60),
        || serves(cluster, i, offset).then_some(()),
    );
}

/// Whether node `i` serves the record at `offset`: one read of that record
/// (not a read to the end, which the running producer keeps moving).
fn serves(cluster: &ProcessCluster, i: usize, offset: u64) -> bool {
    on_node(cluster, i, |target| async move {
        let read = async {
            let mut client = proglog_client::Client::connect(target).await.ok()?;
            client.consume(offset).await.ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(5), read).await,
            Ok(Some(_))
        )
    })
}

#[test]
fn crash_loop_keeps_every_acked_record_at_its_offset_on_every_node() {
    let cycles = env_or("PROGLOG_FAULT_CYCLES", 10);
    let mut rng = Rng::for_test("crash loop");
    let started = Instant::now();
    let mut cluster = ProcessCluster::start(3, &FLAGS);
    let producer = Producer::start(&cluster, "crash", 4);
    producer.wait_progress(50, Duration::from_secs(60), "before the first kill");
    let mut leader_kills = 0;
    for cycle in 0..cycles {
        let t = Instant::now();
        let leader = cluster.leader();
        let victim = if rng.coin() {
            leader
        } else {
            rng.below(3) as usize
        };
        leader_kills += usize::from(victim == leader);
        cluster.kill9(victim);
        producer.wait_progress(20, Duration::from_secs(60), "with a node down");
        let last = producer.last_offset().expect("acks so far");
        cluster.start_node(victim);
        cluster.wait_servers(victim, 3);
        wait_caught_up(&cluster, victim, last);
        eprintln!(
            "cycle {cycle}: killed node{victim}{} and it rejoined in {:?}; {} acked",
            if victim == leader { " (leader)" } else { "" },
            t.elapsed(),
            producer.acked()
        );
    }
    producer.wait_progress(20, Duration::from_secs(60), "after the last restart");
    let produced = producer.stop();
    let checked = check_logs(&cluster, &[0, 1, 2], &produced, CONVERGE);
    eprintln!(
        "crash loop: {cycles} cycles ({leader_kills} of the leader) in {:?}: {} acked, {} failed \
         calls, {} records logged, {} lost, {} duplicates",
        started.elapsed(),
        checked.acked,
        produced.failed.len(),
        checked.logged,
        checked.lost,
        checked.duplicates
    );
}

/// Produces one record straight to node `i` (one call, no retry, no
/// failover) within `timeout`: the node's own answer.
fn produce_on(
    cluster: &ProcessCluster,
    i: usize,
    value: &str,
    timeout: Duration,
) -> Result<u64, String> {
    let value = value.to_string();
    on_node(cluster, i, |target| async move {
        let call = async {
            let mut c = proglog_client::Client::connect(target)
                .await
                .map_err(|e| e.to_string())?;
            c.produce(value).await.map_err(|e| match e {
                proglog_client::Error::Status(s) => format!("{:?}: {}", s.code(), s.message()),
                other => other.to_string(),
            })
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err("no answer in time".into()))
    })
}

#[test]
fn partitions_never_ack_two_records_at_one_offset_and_lose_nothing() {
    if !is_root() {
        eprintln!(
            "!!!! SKIPPED partitions: network namespaces need root and this test runs as \
             another user; run it as root (CI does) !!!!"
        );
        return;
    }
    let mut net = Netns::create(3).expect("network namespaces (we are root)");
    let flaps = env_or("PROGLOG_FAULT_FLAPS", 6);
    let mut rng = Rng::for_test("partitions");
    let started = Instant::now();
    let mut cluster = ProcessCluster::on_hosts(&net.hosts, &net.netns(), &FLAGS);
    cluster.start_all();
    let producer = Producer::start(&cluster, "part", 4);
    producer.wait_progress(50, Duration::from_secs(60), "before any partition");
    let mut passed = Vec::new();

    // 1. The leader loses its network (its port goes down: silence).
    let old = cluster.leader();
    net.unplug(old);
    let rest: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new = agreed_leader(&cluster, &rest, Some(old), Duration::from_secs(60));
    producer.wait_progress(20, Duration::from_secs(60), "with the old leader unplugged");
    net.plug(old);
    let last = producer.last_offset().expect("acks");
    cluster.wait_servers(old, 3);
    wait_caught_up(&cluster, old, last);
    eprintln!("isolate the leader: node{old} unplugged, node{new} took over; healed");
    passed.push("isolate the leader");

    // 2. A follower is cut off from both peers (the test still reaches
    // it): a write sent to it is not acknowledged; the majority goes on.
    // The follower listed first is the one the producer's client asks
    // first when it refreshes, and it soon knows no leader: the client must
    // look past it.
    let leader = cluster.leader();
    let minority = cluster
        .servers(leader)
        .iter()
        .filter(|s| !s.2)
        .find_map(|s| s.0.strip_prefix("node")?.parse::<usize>().ok())
        .expect("a follower listed");
    net.isolate(minority);
    let lone = produce_on(
        &cluster,
        minority,
        "to-the-minority",
        Duration::from_secs(30),
    );
    assert!(
        lone.is_err(),
        "a node cut off from its peers acknowledged a write: {lone:?}"
    );
    producer.wait_progress(20, Duration::from_secs(60), "with a minority cut off");
    net.heal();
    let last = producer.last_offset().expect("acks");
    cluster.wait_servers(minority, 3);
    wait_caught_up(&cluster, minority, last);
    eprintln!("isolate a minority: node{minority} cut off, its write refused ({lone:?}); healed");
    passed.push("isolate a minority");

    // 3. Links flap: a random pair is cut (a non-transitive partition) or a
    // random node unplugged, for a random 0.3-1.5 s, again and again.
    for flap in 0..flaps {
        let a = rng.below(3) as usize;
        let b = (a + 1 + rng.below(2) as usize) % 3;
        let unplug = rng.below(3) == 0;
        if unplug {
            net.unplug(a);
        } else {
            net.cut(a, b);
        }
        // The fault's duration, not synchronisation: nothing is awaited.
        std::thread::sleep(Duration::from_millis(300 + rng.below(1200)));
        net.heal();
        eprintln!(
            "flap {flap}: {}",
            if unplug {
                format!("node{a} unplugged")
            } else {
                format!("link node{a}-node{b} cut")
            }
        );
    }
    passed.push("flapping links");

    // 4. Everything healed: one leader, writes flow, every node catches up.
    net.heal();
    cluster.leader();
    producer.wait_progress(20, Duration::from_secs(60), "after healing");
    passed.push("heal");
    let mut produced = producer.stop();
    if let Err(e) = &lone {
        eprintln!("the minority's refusal: {e}");
        produced.failed.push("to-the-minority".into());
    }
    let checked = check_logs(&cluster, &[0, 1, 2], &produced, CONVERGE);
    eprintln!(
        "partitions: {} scenarios passed ({passed:?}) in {:?}: {} acked, {} failed calls, {} \
         logged, {} lost, {} duplicates",
        passed.len(),
        started.elapsed(),
        checked.acked,
        produced.failed.len(),
        checked.logged,
        checked.lost,
        checked.duplicates
    );
}

#[test]
fn a_full_disk_fails_one_node_without_corruption_and_the_cluster_writes_on() {
    if !is_root() {
        eprintln!("!!!! SKIPPED disk full: mounting a tmpfs needs root !!!!");
        return;
    }
    let started = Instant::now();
    let mut cluster = ProcessCluster::new(3, &FLAGS);
    let full = 2;
    let disk = Tmpfs::mount(&cluster.fx.path(&format!("node{full}")), "48m").expect("a tmpfs");
    cluster.start_all();
    let producer = Producer::start(&cluster, "full", 4);
    producer.wait_progress(100, Duration::from_secs(60), "before the disk fills");

    // Fill the node's disk with a file, to the last byte.
    let filler = disk.path.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0xAAu8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(28), "ENOSPC, got {e}");
                    break;
                }
            }
            assert!(written < 128 << 20, "a 48 MiB tmpfs took 128 MiB");
        }
        let _ = f.sync_all();
    }
    // The node runs out of space at its next write that needs a new block
    // (a segment roll, an index page): it stops acknowledging.
    let mut probes = 0;
    let mut probe_acks = Vec::new();
    let refused = eventually(
        "the full node to refuse writes",
        Duration::from_secs(120),
        || {
            probes += 1;
            let value = format!("probe-{probes}");
            match produce_on(&cluster, full, &value, Duration::from_secs(15)) {
                Ok(offset) => {
                    probe_acks.push((offset, value));
                    None
                }
                Err(e) => Some(e),
            }
        },
    );
    if !(refused.starts_with("Unavailable") || refused.starts_with("ResourceExhausted")) {
        let agent = cluster.procs[full].as_mut().unwrap();
        let status = agent.wait_exit(Duration::from_secs(5));
        let log = agent.stderr();
        eprintln!("the full node exited: {status:?}");
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "the full node answered {refused}; its log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    eprintln!("disk full: node{full} refuses writes after {probes} probes: {refused}");
    // The other two write on.
    producer.wait_progress(50, Duration::from_secs(60), "with one node's disk full");
    // Reads keep working on the full node.
    let out = client("consume", &cluster.conn(full), &["--from", "0"], "");
    let read = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(
        read > 0,
        "no reads on the full node: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Space freed, the node restarted: it recovers without corruption,
    // catches up and takes writes again.
    std::fs::remove_file(&filler).unwrap();
    cluster.kill9(full);
    cluster.start_node(full);
    cluster.wait_servers(full, 3);
    let last = producer.last_offset().expect("acks");
    wait_caught_up(&cluster, full, last);
    let again = produce_on(&cluster, full, "after-space-freed", Duration::from_secs(30));
    let mut produced = producer.stop();
    match again {
        Ok(offset) => produced.acked.push((offset, "after-space-freed".into())),
        Err(e) => panic!("the restarted node refused a write: {e}"),
    }
    produced.acked.extend(probe_acks);
    produced.failed.push(format!("probe-{probes}"));
    let checked = check_logs(&cluster, &[0, 1, 2], &produced, CONVERGE);
    let stderr = cluster.procs[full].as_ref().unwrap().stderr();
    assert!(!stderr.contains("damaged"), "{stderr}");
    eprintln!(
        "disk full: {} acked, {} logged, {} lost, {} duplicates, {read} records readable on the \
         full node, in {:?}",
        checked.acked,
        checked.logged,
        checked.lost,
        checked.duplicates,
        started.elapsed()
    );
    drop(cluster);
    drop(disk);
}

#[test]
fn a_torn_store_tail_is_cut_back_on_restart_and_the_node_catches_up() {
    let mut cluster = ProcessCluster::start(3, &FLAGS);
    let producer = Producer::start(&cluster, "torn", 4);
    producer.wait_progress(300, Duration::from_secs(60), "before the stop");
    let leader = cluster.leader();
    let victim = (0..3).find(|&i| i != leader).unwrap();
    eprintln!("torn tail: leader node{leader}, killing node{victim}");
    cluster.kill9(victim);
    let data = cluster.fx.path(&format!("node{victim}"));
    let mut torn = Vec::new();
    for wal in ["raft/entries", "sm/data"] {
        let store = newest_store(&data.join(wal)).unwrap_or_else(|| panic!("a store in {wal}"));
        let cut =
            tear_last_entry(&store).unwrap_or_else(|| panic!("{} holds no entry", store.display()));
        torn.push(format!("{} cut to {cut} bytes", store.display()));
    }
    producer.wait_progress(50, Duration::from_secs(60), "while the node is down");
    cluster.start_node(victim);
    cluster.wait_servers(victim, 3);
    let last = producer.last_offset().expect("acks");
    wait_caught_up(&cluster, victim, last);
    let stderr = cluster.procs[victim].as_ref().unwrap().stderr();
    assert!(
        stderr.contains("torn or corrupt tail cut back"),
        "the restart did not report the torn tail:\n{stderr}"
    );
    producer.wait_progress(20, Duration::from_secs(60), "after the restart");
    let produced = producer.stop();
    let checked = check_logs(&cluster, &[0, 1, 2], &produced, CONVERGE);
    eprintln!(
        "torn tail: {torn:?}; {} acked, {} logged, {} lost, {} duplicates",
        checked.acked, checked.logged, checked.lost, checked.duplicates
    );
}

//! The agent's lifecycle with real processes and real signals: SIGTERM of
//! the leader hands leadership on and the node stays a member,
//! `--leave-on-terminate` removes it, sd_notify's READY=1 and STOPPING=1,
//! a cluster whose nodes all start at once, and `--bootstrap` refused on a
//! wiped node whose cluster still exists.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use proglog_tests::{client, eventually, AgentProcess, Fixture, ProcessCluster};

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The role (`leader`, `voter`, `learner`) node `i`'s `proglog status`
/// gives the member named `name`.
fn role(cluster: &ProcessCluster, i: usize, name: &str) -> Option<String> {
    let out = client("status", &cluster.conn(i), &[], "");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            (cells.len() == 5 && cells[1] == name).then(|| cells[3].to_string())
        })
}

/// The leader node `i` names, as a node index.
fn leader_seen_by(cluster: &ProcessCluster, i: usize) -> Option<usize> {
    let servers = cluster.servers(i);
    let name = servers.into_iter().find(|s| s.2)?.0;
    name.strip_prefix("node")?.parse().ok()
}

#[test]
fn sigterm_of_the_leader_hands_leadership_on_and_a_restart_rejoins_as_a_voter() {
    let mut cluster = ProcessCluster::start(3, &["--produce-timeout", "5s"]);
    let leader = cluster.leader();
    let batch = values("before", 10);
    let mut acked: Vec<(u64, String)> = cluster
        .produce(leader, &batch)
        .into_iter()
        .zip(batch)
        .collect();

    let (status, stderr) = cluster.terminate(leader);
    assert!(status.success(), "SIGTERM exits 0: {status}\n{stderr}");
    assert!(
        stderr.contains("leadership handed over"),
        "the leader handed leadership on before stopping:\n{stderr}"
    );
    // The hand-off happened before the process exited: the survivors name
    // a new leader at once (a few seconds is slack for CI, not an election).
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new = eventually(
        "the survivors to agree on a new leader",
        Duration::from_secs(5),
        || {
            let views: Vec<Option<usize>> = survivors
                .iter()
                .map(|&i| leader_seen_by(&cluster, i))
                .collect();
            let first = views[0]?;
            (first != leader && views.iter().all(|v| *v == Some(first))).then_some(first)
        },
    );
    // Still a member while it is down.
    for &i in &survivors {
        let names: Vec<String> = cluster.servers(i).into_iter().map(|s| s.0).collect();
        assert!(
            names.contains(&format!("node{leader}")),
            "node{i} lists {names:?}"
        );
        assert_eq!(names.len(), 3, "node{i} lists {names:?}");
    }
    let survivor = *survivors.iter().find(|&&i| i != new).unwrap();
    let batch = values("after", 10);
    let offsets = cluster.produce(survivor, &batch);
    assert_eq!(
        offsets,
        (10..20).collect::<Vec<u64>>(),
        "writes through a survivor continue"
    );
    acked.extend(offsets.into_iter().zip(batch));

    // The same command line: a voter again, with every acked record.
    cluster.start_node(leader);
    cluster.wait_records(leader, &acked);
    let name = format!("node{leader}");
    let role = eventually(
        "the restarted node to be a voter",
        Duration::from_secs(30),
        || {
            let current = leader_seen_by(&cluster, survivor)?;
            role(&cluster, current, &name).filter(|r| r == "voter" || r == "leader")
        },
    );
    assert!(role == "voter" || role == "leader");
}

#[test]
fn sigterm_with_leave_on_terminate_removes_a_follower_and_a_second_signal_exits_at_once() {
    let mut cluster = ProcessCluster::start(3, &["--leave-on-terminate"]);
    let leader = cluster.leader();
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let (status, stderr) = cluster.terminate(follower);
    assert!(status.success(), "SIGTERM exits 0: {status}\n{stderr}");
    assert!(stderr.contains("left the cluster"), "{stderr}");
    for i in (0..3).filter(|&i| i != follower) {
        cluster.wait_servers(i, 2);
        let names: Vec<String> = cluster.servers(i).into_iter().map(|s| s.0).collect();
        assert!(
            !names.contains(&format!("node{follower}")),
            "node{i} lists {names:?}"
        );
    }
    // The two left still commit (a quorum of two, not of three).
    let offsets = cluster.produce(leader, &values("after-leave", 3));
    assert_eq!(offsets.len(), 3);

    // A second signal does not wait for a slow stop: with the other node
    // frozen, the leader's hand-off would wait out its 10 s bound.
    let other = (0..3).find(|&i| i != leader && i != follower).unwrap();
    cluster.procs[other].as_ref().unwrap().signal("STOP");
    let agent = cluster.procs[leader].as_mut().unwrap();
    agent.signal("TERM");
    eventually(
        "the leader to start its hand-off",
        Duration::from_secs(10),
        || agent.stderr().contains("handing leadership").then_some(()),
    );
    let second = Instant::now();
    agent.signal("TERM");
    let status = agent.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "{}", agent.stderr());
    assert!(
        agent.stderr().contains("second signal"),
        "{}",
        agent.stderr()
    );
    assert!(second.elapsed() < Duration::from_secs(5));
    cluster.procs[other].as_ref().unwrap().signal("CONT");
}

#[test]
fn sd_notify_says_ready_once_serving_and_stopping_on_sigterm() {
    let fx = Fixture::new();
    let socket_path = fx.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    // A bounded wait for each datagram, not a sleep.
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let recv = || {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let port = proglog_tests::free_port();
    let args = fx.agent_args("data", port);
    let mut agent = AgentProcess::start_with_env(
        &args,
        fx.path("agent.log"),
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    assert_eq!(recv(), "READY=1", "{}", agent.stderr());
    // READY=1 means serving: the first call is answered, no retry (a
    // leader need not be elected yet).
    let conn = fx.client_args("root", port);
    let out = client("servers", &conn, &[], "");
    assert!(
        proglog_tests::servers_answered(&out),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    agent.signal("TERM");
    assert_eq!(recv(), "STOPPING=1", "{}", agent.stderr());
    let status = agent.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit {status}: {}", agent.stderr());
}

#[test]
fn nodes_started_at_once_form_one_cluster_and_a_wiped_bootstrap_node_is_refused() {
    let mut cluster = ProcessCluster::new(3, &[]);
    // In reverse: the joiners are up before the node that bootstraps.
    for i in (0..3).rev() {
        cluster.spawn_node(i);
    }
    for i in 0..3 {
        let conn = cluster.conn(i);
        cluster.procs[i].as_mut().unwrap().wait_ready(&conn);
    }
    for i in 0..3 {
        cluster.wait_servers(i, 3);
    }
    let leader = cluster.leader();
    for i in 0..3 {
        assert_eq!(cluster.servers(i).len(), 3);
        assert_eq!(
            leader_seen_by(&cluster, i),
            Some(leader),
            "node{i}'s leader"
        );
    }

    // Node 0 loses its data; restarted with --bootstrap and the survivors'
    // gossip addresses as --start-join-addrs, it must not found a second
    // cluster.
    let (status, stderr) = cluster.terminate(0);
    assert!(status.success(), "{stderr}");
    std::fs::remove_dir_all(cluster.fx.path("node0")).unwrap();
    let survivors = format!(
        "127.0.0.1:{},127.0.0.1:{}",
        cluster.gossip_ports[1], cluster.gossip_ports[2]
    );
    let mut args = cluster.args(0);
    assert!(args.contains(&"--bootstrap".to_string()));
    args.extend(["--start-join-addrs".to_string(), survivors]);
    let started = Instant::now();
    let agent = cluster.spawn_with(0, &args);
    let status = agent.wait_exit(Duration::from_secs(30));
    let stderr = agent.stderr();
    assert_eq!(
        status.code(),
        Some(2),
        "refused as a usage error:\n{stderr}"
    );
    assert!(stderr.contains("a cluster exists"), "{stderr}");
    let named = [1, 2]
        .iter()
        .any(|&i| stderr.contains(&format!("127.0.0.1:{}", cluster.ports[i])));
    assert!(
        named,
        "the message names the member that answered:\n{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "refused within the probe's bound"
    );
    cluster.procs[0] = None;
    // The cluster is untouched: two running, three members.
    for i in [1, 2] {
        cluster.wait_servers(i, 3);
    }
}

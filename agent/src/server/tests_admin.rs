//! Admin service tests on one agent over real TLS: the ACL action
//! `admin`, the status of a bootstrapped node, argument and unknown-node
//! errors, the leader hint a follower's refusal carries, and reflection.
//! Changes on a cluster of several nodes are tested with the cluster
//! harness.

use proglog_client::{leader_addr, Error};
use proglog_proto::admin::ClusterStatusResponse;
use tonic::Code;

use super::tests::{code, eventually, Node};
use crate::raft::node::MembershipError;
use crate::raft::Member;

/// The status once the bootstrapped node has elected itself.
async fn status_with_leader(node: &Node) -> ClusterStatusResponse {
    let mut c = node.client("root").await;
    let mut last = None;
    eventually("the node to lead", async || {
        let status = c.cluster_status().await.unwrap();
        let leads = status.leader_id != 0;
        last = Some(status);
        leads
    })
    .await;
    last.unwrap()
}

#[tokio::test]
async fn root_may_call_admin_rpcs_and_nobody_is_denied() {
    let node = Node::start(|_| {}).await;
    status_with_leader(&node).await;
    let mut nobody = node.client("nobody").await;
    assert_eq!(code(nobody.cluster_status().await), Code::PermissionDenied);
    assert_eq!(
        code(nobody.add_voter(5, "n", "127.0.0.1:1").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(nobody.remove_server("test-node").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(nobody.transfer_leadership(None).await),
        Code::PermissionDenied
    );
    assert_eq!(code(nobody.members().await), Code::PermissionDenied);
    // Denied before any argument is looked at.
    assert_eq!(
        code(nobody.add_voter(0, "", "").await),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn cluster_status_of_a_bootstrapped_node_shows_it_as_the_only_voter_and_leader() {
    let node = Node::start(|_| {}).await;
    let s = status_with_leader(&node).await;
    let addr = node.agent.rpc_addr().to_string();
    assert_ne!(s.id, 0);
    assert_eq!(s.name, "test-node");
    assert_eq!((s.leader_id, s.leader_name.as_str()), (s.id, "test-node"));
    assert!(s.term >= 1, "{s:?}");
    assert!(s.last_log_index >= 1, "{s:?}");
    assert_eq!(s.members.len(), 1, "{s:?}");
    let me = &s.members[0];
    assert_eq!(
        (me.id, me.name.as_str(), me.rpc_addr.as_str(), me.voter),
        (s.id, "test-node", addr.as_str(), true)
    );
    // A produce moves the indexes; the leader's own log matches its end.
    node.client("root").await.produce("x").await.unwrap();
    let mut c = node.client("root").await;
    let mut after = None;
    eventually("the produce to be applied", async || {
        let now = c.cluster_status().await.unwrap();
        let applied = now.applied_index > s.applied_index;
        after = Some(now);
        applied
    })
    .await;
    let after = after.unwrap();
    assert!(after.last_log_index > s.last_log_index, "{after:?}");
    assert!(after.applied_index <= after.last_log_index, "{after:?}");
    assert!(
        after.members[0].matched_index >= after.applied_index,
        "{after:?}"
    );
}

#[tokio::test]
async fn remove_server_of_an_unknown_node_is_not_found() {
    let node = Node::start(|_| {}).await;
    let s = status_with_leader(&node).await;
    let mut c = node.client("root").await;
    assert_eq!(code(c.remove_server("no-such-node").await), Code::NotFound);
    let unknown_id = (s.id % 1000) + 1;
    assert_eq!(
        code(c.remove_server(&unknown_id.to_string()).await),
        Code::NotFound
    );
    assert_eq!(code(c.remove_server("").await), Code::InvalidArgument);
    assert_eq!(
        code(c.transfer_leadership(Some("no-such-node")).await),
        Code::NotFound
    );
    // Nothing changed.
    assert_eq!(c.cluster_status().await.unwrap().members.len(), 1);
}

#[tokio::test]
async fn add_voter_with_a_bad_argument_is_invalid_argument() {
    let node = Node::start(|_| {}).await;
    status_with_leader(&node).await;
    let mut c = node.client("root").await;
    let bad = [
        (5, "n", ""),
        (5, "n", "no-port"),
        (0, "n", "127.0.0.1:1"),
        (5, "", "127.0.0.1:1"),
    ];
    for (id, name, addr) in bad {
        match c.add_voter(id, name, addr).await {
            Err(Error::Status(s)) => {
                assert_eq!(s.code(), Code::InvalidArgument, "{id} {name:?} {addr:?}");
                assert!(s.message().starts_with("invalid argument"), "{s:?}");
            }
            other => panic!("{id} {name:?} {addr:?}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    // This node's own name for another id is refused too.
    assert_eq!(
        code(c.add_voter(5, "test-node", "127.0.0.1:1").await),
        Code::AlreadyExists
    );
    assert_eq!(c.cluster_status().await.unwrap().members.len(), 1);
}

#[test]
fn a_follower_refusal_names_the_leader_for_the_retry() {
    let leader = Member::new("node-b", "10.1.2.3:8400");
    let status = tonic::Status::from(MembershipError::NotLeader {
        leader: Some((42, leader)),
    });
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("node-b@10.1.2.3:8400"),
        "{status:?}"
    );
    let error = Error::Status(status);
    assert_eq!(leader_addr(&error).as_deref(), Some("10.1.2.3:8400"));

    let unknown = tonic::Status::from(MembershipError::NotLeader { leader: None });
    assert_eq!(unknown.code(), Code::Unavailable);
    assert_eq!(leader_addr(&Error::Status(unknown)), None);
    let raft = tonic::Status::from(MembershipError::Raft("x".into()));
    assert_eq!(raft.code(), Code::Unavailable);
}

#[tokio::test]
async fn reflection_lists_the_admin_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let node = Node::start(|c| c.dev = true).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", node.agent.rpc_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("expected a service list, got {reply:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"proglog.admin.v1.Admin"), "{names:?}");
    assert!(names.contains(&"log.v1.Log"), "{names:?}");
}

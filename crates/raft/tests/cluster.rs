//! Three in-process members replicating over real gRPC on 127.0.0.1:
//! election, replication, reads through ReadIndex on followers, leader loss,
//! and catch-up by snapshot after the log was purged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_mvcc::{CommandResponse, Store, StoreOptions};
use ballast_proto::ballastpb::raft_peer_server::RaftPeerServer;
use ballast_proto::ballastpb::{command::Op, Command};
use ballast_proto::etcdserverpb::{PutRequest, RangeRequest};
use ballast_raft::{MemberNode, NodeConfig, NodeError, RaftNode, MAX_PEER_MESSAGE};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const CLUSTER: u64 = 0xc1;
const DEADLINE: Duration = Duration::from_secs(20);

struct Member {
    id: u64,
    dir: tempfile::TempDir,
    port: u16,
    node: Option<Arc<RaftNode>>,
    server: Option<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)>,
}

fn put(k: &str, v: &str) -> Command {
    Command {
        op: Some(Op::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })),
    }
}

fn node_record(port: u16) -> MemberNode {
    MemberNode {
        name: format!("m{port}"),
        peer_urls: vec![format!("http://127.0.0.1:{port}")],
        client_urls: vec![],
    }
}

impl Member {
    async fn start(&mut self, listener: Option<TcpListener>) {
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(("127.0.0.1", self.port)).await.unwrap(),
        };
        let mut cfg = NodeConfig::new(
            self.id,
            CLUSTER,
            self.dir.path().join("raft"),
            self.dir.path().join("snap"),
        );
        cfg.heartbeat = Duration::from_millis(50);
        cfg.election_timeout = Duration::from_millis(300);
        cfg.snapshot_count = 50;
        cfg.catchup_entries = 10;
        let store = Store::open(self.dir.path().join("kv"), StoreOptions::default()).unwrap();
        let node = RaftNode::start(cfg, store).await.unwrap();
        let svc = RaftPeerServer::new(node.peer_service())
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.await;
                })
                .await;
        });
        self.server = Some((stop, task));
        self.node = Some(node);
    }

    async fn stop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
        // A graceful stop closes the peers' connections, so they reconnect
        // to whatever listens on the port next.
        if let Some((stop, task)) = self.server.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(DEADLINE, task).await;
        }
    }

    fn node(&self) -> &Arc<RaftNode> {
        self.node.as_ref().expect("running")
    }
}

async fn cluster() -> Vec<Member> {
    let mut members = Vec::new();
    let mut listeners = Vec::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        listeners.push(l);
        members.push(Member {
            id,
            dir: tempfile::tempdir().unwrap(),
            port,
            node: None,
            server: None,
        });
    }
    let records: BTreeMap<u64, MemberNode> = members
        .iter()
        .map(|m| (m.id, node_record(m.port)))
        .collect();
    for (m, l) in members.iter_mut().zip(listeners) {
        m.start(Some(l)).await;
    }
    for m in &members {
        m.node().bootstrap(records.clone()).await.unwrap();
    }
    members
}

async fn leader(members: &[Member]) -> usize {
    let start = Instant::now();
    loop {
        for (i, m) in members.iter().enumerate() {
            if let Some(node) = &m.node {
                if node.metrics().current_leader == Some(m.id) {
                    return i;
                }
            }
        }
        assert!(start.elapsed() < DEADLINE, "no leader elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn write(members: &[Member], cmd: Command) -> CommandResponse {
    let start = Instant::now();
    loop {
        let i = leader(members).await;
        match members[i].node().write_local(cmd.clone()).await {
            Ok((r, _index)) => return r.unwrap(),
            Err(NodeError::NotLeader { .. } | NodeError::NoLeader) => {}
            Err(e) => panic!("write failed: {e}"),
        }
        assert!(start.elapsed() < DEADLINE, "write not accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read(m: &Member, key: &str) -> Option<Vec<u8>> {
    tokio::time::timeout(DEADLINE, m.node().read_barrier())
        .await
        .expect("read barrier in time")
        .expect("read barrier");
    let r = m
        .node()
        .store()
        .range(&RangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .unwrap();
    r.kvs.first().map(|kv| kv.value.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicates_fails_over_and_catches_up_by_snapshot() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut members = cluster().await;
    let first = leader(&members).await;
    match write(&members, put("a", "1")).await {
        // A new store is at revision 1 (as etcd's): the first write is 2.
        CommandResponse::Put(p) => assert_eq!(p.header.unwrap().revision, 2),
        other => panic!("{other:?}"),
    }
    // Linearizable reads on every member, followers included.
    for m in &members {
        assert_eq!(read(m, "a").await.as_deref(), Some(&b"1"[..]));
    }
    // Only one leader per term.
    let term = members[first].node().metrics().current_term;
    for m in &members {
        let mt = m.node().metrics();
        if mt.current_term == term {
            assert_eq!(mt.current_leader, Some(members[first].id));
        }
    }

    // Lose the leader: the other two elect a new one and keep serving.
    members[first].stop().await;
    write(&members, put("b", "2")).await;
    let second = leader(&members).await;
    assert_ne!(second, first);
    assert!(members[second].node().metrics().current_term > term);

    // Stop a follower too late to keep up: the log moves past snapshots.
    let lagging = (0..3).find(|i| *i != first && *i != second).unwrap();
    members[first].start(None).await;
    members[lagging].stop().await;
    for i in 0..200 {
        write(&members, put(&format!("k{i:03}"), &i.to_string())).await;
    }
    let snap = members[second].node().metrics().snapshot;
    assert!(snap.is_some(), "a snapshot was taken");
    members[lagging].start(None).await;
    assert_eq!(
        read(&members[lagging], "k199").await.as_deref(),
        Some(&b"199"[..])
    );
    assert_eq!(
        read(&members[lagging], "b").await.as_deref(),
        Some(&b"2"[..])
    );
    // Its log was purged past the lagging member, so it got a snapshot.
    assert!(
        members[second].node().metrics().purged.is_some(),
        "the leader purged its log"
    );
    assert!(
        members[lagging].node().metrics().snapshot.is_some(),
        "the lagging member installed a snapshot"
    );

    // Every member ends with the same revision and data.
    let all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let want = members[second].node().store().range(&all).unwrap();
    for m in &members {
        m.node().read_barrier().await.unwrap();
        let got = m.node().store().range(&all).unwrap();
        assert_eq!(got.kvs, want.kvs);
        assert_eq!(m.node().store().current_revision(), 203);
    }
    for m in &mut members {
        m.stop().await;
    }
}

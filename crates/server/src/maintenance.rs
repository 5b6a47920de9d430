//! The etcd v3 Maintenance service: status, hashes, alarms,
//! defragmentation, snapshots, leader moves.

use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use ballast_mvcc::{CommandResponse, Store};
use ballast_proto::ballastpb::{command::Op, Command};
use ballast_proto::etcdserverpb::maintenance_server::Maintenance;
use ballast_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, ResponseHeader, SnapshotRequest, SnapshotResponse,
    StatusRequest, StatusResponse,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::errors::EtcdError;
use crate::kv::HeaderInfo;
use crate::proposer::Proposer;
use ballast_raft::NodeError;

/// Size of the `blob` of each snapshot message, as etcd's
/// `snapshotSendBufferSize`.
pub const SNAPSHOT_CHUNK: usize = 32 * 1024;
/// The image sent is zero-padded to a multiple of this: etcdctl (3.4.16 and
/// later) accepts a saved snapshot only if its size is a multiple of 512
/// plus the 32-byte checksum, as a bolt file's is.
pub const SNAPSHOT_ALIGN: u64 = 512;

/// Maintenance over the MVCC engine. Alarms change replicated state and go
/// through the [`Proposer`]; everything else is local to the member.
pub struct MaintenanceService {
    store: Store,
    proposer: Proposer,
    header: HeaderInfo,
    snapshot_dir: PathBuf,
    next_snapshot: AtomicU64,
}

/// An alarm as etcd prints it in `Status.errors` (protobuf text format,
/// trailing space included): `memberID:10276657743932975437 alarm:NOSPACE `.
pub fn alarm_text(m: &AlarmMember) -> String {
    let alarm = AlarmType::try_from(m.alarm)
        .map(|a| a.as_str_name().to_string())
        .unwrap_or_else(|_| m.alarm.to_string());
    format!("memberID:{} alarm:{} ", m.member_id, alarm)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| EtcdError::Stopped.into())
}

impl MaintenanceService {
    /// A maintenance service over `store`; snapshots being sent are staged
    /// in `snapshot_dir`.
    pub fn new(
        store: Store,
        proposer: Proposer,
        header: HeaderInfo,
        snapshot_dir: PathBuf,
    ) -> Self {
        MaintenanceService {
            store,
            proposer,
            header,
            snapshot_dir,
            next_snapshot: AtomicU64::new(1),
        }
    }

    fn header(&self) -> Option<ResponseHeader> {
        let mut h = None;
        self.header.fill(&mut h, self.store.current_revision());
        h
    }
}

/// Writes a whole-store image, zero-padded to [`SNAPSHOT_ALIGN`], to an
/// unlinked file in `dir` and returns it rewound, with its size: the size
/// is needed before the first message.
fn stage_image(
    store: &Store,
    dir: &std::path::Path,
    seq: u64,
) -> Result<(std::fs::File, u64), EtcdError> {
    let storage = |e: std::io::Error| EtcdError::Storage(format!("snapshot: {e}"));
    std::fs::create_dir_all(dir).map_err(storage)?;
    let path = dir.join(format!("{seq}.snap"));
    let mut file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(storage)?;
    // Nothing is left behind, whatever happens next.
    std::fs::remove_file(&path).map_err(storage)?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, &mut file);
        let mut counted = CountingWriter {
            inner: &mut w,
            n: 0,
        };
        store.write_snapshot(&mut counted, &[])?;
        let pad = (SNAPSHOT_ALIGN - counted.n % SNAPSHOT_ALIGN) % SNAPSHOT_ALIGN;
        w.write_all(&vec![0u8; pad as usize]).map_err(storage)?;
        w.flush().map_err(storage)?;
    }
    let size = file.seek(SeekFrom::End(0)).map_err(storage)?;
    file.seek(SeekFrom::Start(0)).map_err(storage)?;
    Ok((file, size))
}

struct CountingWriter<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Sends the staged image in [`SNAPSHOT_CHUNK`] pieces with the bytes that
/// remain after each, then, as etcd, one last message whose blob is the
/// SHA-256 of everything sent (`etcdctl snapshot save` stores it at the
/// end of the file, and restoring checks it).
fn send_image(
    mut file: std::fs::File,
    size: u64,
    header: Option<ResponseHeader>,
    tx: mpsc::Sender<Result<SnapshotResponse, Status>>,
) {
    let mut sha = Sha256::new();
    let mut sent = 0u64;
    let mut first = true;
    while sent < size {
        let n = (size - sent).min(SNAPSHOT_CHUNK as u64) as usize;
        let mut blob = vec![0u8; n];
        if let Err(e) = file.read_exact(&mut blob) {
            let _ = tx.blocking_send(Err(Status::internal(format!("etcdserver: snapshot: {e}"))));
            return;
        }
        sha.update(&blob);
        sent += n as u64;
        let msg = SnapshotResponse {
            header: if first { header } else { None },
            remaining_bytes: size - sent,
            blob,
            version: if first {
                crate::ETCD_VERSION.to_string()
            } else {
                String::new()
            },
        };
        first = false;
        if tx.blocking_send(Ok(msg)).is_err() {
            return; // the client went away
        }
    }
    let _ = tx.blocking_send(Ok(SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: sha.finalize().to_vec(),
        version: String::new(),
    }));
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let req = request.into_inner();
        match self
            .proposer
            .propose(Command {
                op: Some(Op::Alarm(req)),
            })
            .await?
        {
            CommandResponse::Alarm(mut r) => {
                self.header
                    .fill(&mut r.header, self.store.current_revision());
                Ok(Response::new(r))
            }
            _ => Err(Status::internal("etcdserver: unexpected response to alarm")),
        }
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let store = self.store.clone();
        let (db_size, db_size_in_use) =
            blocking(move || (store.db_size(), store.db_size_in_use())).await?;
        let errors = self.store.alarms().iter().map(alarm_text).collect();
        let node = self.proposer.node();
        let m = node.metrics();
        let is_learner = node
            .members()
            .iter()
            .any(|x| x.id == node.id() && x.is_learner);
        Ok(Response::new(StatusResponse {
            header: self.header(),
            version: crate::ETCD_VERSION.to_string(),
            db_size: db_size as i64,
            leader: node.leader_id().unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            errors,
            db_size_in_use: db_size_in_use as i64,
            is_learner,
        }))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let store = self.store.clone();
        tracing::info!(db_size = store.db_size(), "starting defragment");
        blocking(move || store.defragment())
            .await?
            .map_err(EtcdError::from)?;
        tracing::info!(db_size = self.store.db_size(), "finished defragment");
        Ok(Response::new(DefragmentResponse {
            header: self.header(),
        }))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let store = self.store.clone();
        let (hash, rev) = blocking(move || store.hash())
            .await?
            .map_err(EtcdError::from)?;
        let mut header = Some(ResponseHeader {
            revision: rev,
            ..Default::default()
        });
        self.header.fill(&mut header, rev);
        Ok(Response::new(HashResponse { header, hash }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let rev = request.into_inner().revision;
        let store = self.store.clone();
        let h = blocking(move || store.hash_kv(rev))
            .await?
            .map_err(EtcdError::from)?;
        let mut header = Some(ResponseHeader {
            revision: h.current_revision,
            ..Default::default()
        });
        self.header.fill(&mut header, h.current_revision);
        Ok(Response::new(HashKvResponse {
            header,
            hash: h.hash,
            // -1 until the first compaction, as etcd.
            compact_revision: h.compact_revision,
            hash_revision: h.hash_revision,
        }))
    }

    type SnapshotStream = ReceiverStream<Result<SnapshotResponse, Status>>;

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let store = self.store.clone();
        let dir = self.snapshot_dir.clone();
        let seq = self.next_snapshot.fetch_add(1, Ordering::Relaxed);
        let (file, size) = blocking(move || stage_image(&store, &dir, seq)).await??;
        tracing::info!(size, "sending database snapshot to client");
        let (tx, rx) = mpsc::channel(4);
        let header = self.header();
        tokio::task::spawn_blocking(move || send_image(file, size, header, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        let node = self.proposer.node();
        if !node
            .members()
            .iter()
            .any(|m| m.id == target && !m.is_learner)
        {
            return Err(EtcdError::BadLeaderTransferee.into());
        }
        match node.transfer_leadership(target).await {
            Ok(()) => {}
            Err(NodeError::NotLeader { .. } | NodeError::NoLeader) => {
                return Err(Status::failed_precondition("etcdserver: not leader"))
            }
            Err(NodeError::Rejected(_)) => return Err(EtcdError::BadLeaderTransferee.into()),
            Err(NodeError::Unavailable(m)) => return Err(Status::unavailable(m)),
        }
        Ok(Response::new(MoveLeaderResponse {
            header: self.header(),
        }))
    }

    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(EtcdError::DowngradeUnsupported.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_text_is_etcds() {
        let m = AlarmMember {
            member_id: 15985099378392235387,
            alarm: AlarmType::Nospace as i32,
        };
        assert_eq!(
            alarm_text(&m),
            "memberID:15985099378392235387 alarm:NOSPACE "
        );
    }
}

//! The single-member write pipeline: commands are applied in arrival order,
//! and those that arrive together share one synced write (group commit).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ballast_mvcc::{CommandResponse, Store};
use ballast_proto::ballastpb::Command;
use tokio::sync::{mpsc, oneshot, watch};

use crate::errors::EtcdError;
use crate::metrics::Metrics;

/// Most commands applied in one write.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<CommandResponse, EtcdError>>;

/// Feeds commands to the engine from one apply thread.
///
/// # Guarantees
/// A command's response is sent only after its changes are durable; commands
/// apply in the order `propose` was called (per caller, and globally in
/// channel order).
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<(Command, Reply)>,
    metrics: Arc<Metrics>,
    exited: watch::Receiver<bool>,
}

/// Counts a proposal as pending while it lives.
struct PendingGuard<'a>(&'a Metrics);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.proposals_pending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Proposer {
    /// Starts the apply thread; it stops when every `Proposer` is dropped.
    pub fn start(store: Store) -> Proposer {
        Self::start_with_metrics(store, Arc::new(Metrics::default()))
    }

    /// Like [`Proposer::start`], counting proposals and write latencies in
    /// `metrics`.
    pub fn start_with_metrics(store: Store, metrics: Arc<Metrics>) -> Proposer {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let (exited_tx, exited) = watch::channel(false);
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("apply".into())
            .spawn(move || {
                apply_loop(store, rx, &m);
                // The store handle is gone: tell whoever waits to reopen it.
                exited_tx.send_replace(true);
            })
            .expect("spawn apply thread");
        Proposer {
            tx,
            metrics,
            exited,
        }
    }

    /// Resolves once the apply thread has stopped and released its store
    /// handle (after every `Proposer` clone is dropped).
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut exited = self.exited.clone();
        async move {
            let _ = exited.wait_for(|done| *done).await;
        }
    }

    /// Applies `cmd` and returns its outcome.
    ///
    /// # Cancel safety
    /// Dropping the future does not withdraw the command: it may still apply.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResponse, EtcdError> {
        self.metrics
            .proposals_pending
            .fetch_add(1, Ordering::Relaxed);
        let _pending = PendingGuard(&self.metrics);
        let (done, wait) = oneshot::channel();
        let res = match self.tx.send((cmd, done)).await {
            Err(_) => Err(EtcdError::Stopped),
            Ok(()) => wait.await.unwrap_or(Err(EtcdError::Stopped)),
        };
        if matches!(res, Err(EtcdError::Stopped | EtcdError::Storage(_))) {
            self.metrics
                .proposals_failed
                .fetch_add(1, Ordering::Relaxed);
        }
        res
    }
}

fn apply_loop(store: Store, mut rx: mpsc::Receiver<(Command, Reply)>, metrics: &Metrics) {
    let mut next_index = store.applied_index() + 1;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (cmds, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().unzip();
        let entries: Vec<(u64, Command)> = cmds
            .into_iter()
            .enumerate()
            .map(|(i, c)| (next_index + i as u64, c))
            .collect();
        let started = Instant::now();
        let applied = store.apply(&entries);
        let took = started.elapsed();
        metrics.backend_commit.observe(took);
        metrics.wal_fsync.observe(took);
        match applied {
            Ok(results) => {
                next_index += entries.len() as u64;
                for (reply, res) in replies.into_iter().zip(results) {
                    let _ = reply.send(res.map_err(EtcdError::from));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "write to disk failed; this member refuses writes until restarted");
                for reply in replies {
                    let _ = reply.send(Err(EtcdError::from(e.clone())));
                }
            }
        }
    }
}

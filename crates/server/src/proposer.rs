//! The single-member write pipeline: commands are applied in arrival order,
//! and those that arrive together share one synced write (group commit).

use ballast_mvcc::{CommandResponse, Store};
use ballast_proto::ballastpb::Command;
use tokio::sync::{mpsc, oneshot};

use crate::errors::EtcdError;

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
}

impl Proposer {
    /// Starts the apply thread; it stops when every `Proposer` is dropped.
    pub fn start(store: Store) -> Proposer {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        std::thread::Builder::new()
            .name("apply".into())
            .spawn(move || apply_loop(store, rx))
            .expect("spawn apply thread");
        Proposer { tx }
    }

    /// Applies `cmd` and returns its outcome.
    ///
    /// # Cancel safety
    /// Dropping the future does not withdraw the command: it may still apply.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResponse, EtcdError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((cmd, done))
            .await
            .map_err(|_| EtcdError::Stopped)?;
        wait.await.map_err(|_| EtcdError::Stopped)?
    }
}

fn apply_loop(store: Store, mut rx: mpsc::Receiver<(Command, Reply)>) {
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
        match store.apply(&entries) {
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

//! The load: writers issuing random operations through random members.

use super::*;

/// Writer tasks issuing random writes through random members.
pub(crate) struct Load {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) acked: Arc<AtomicU64>,
    pub(crate) ops: Arc<Mutex<Vec<OpRec>>>,
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub(crate) fn start(endpoints: &[String], rng: &mut Rng) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let ops = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..WRITERS)
            .map(|w| {
                let (stop, acked, ops) = (stop.clone(), acked.clone(), ops.clone());
                let endpoints = endpoints.to_vec();
                let mut rng = rng.fork();
                tokio::spawn(async move {
                    let mut clients: Vec<Option<Client>> = vec![None; endpoints.len()];
                    for seq in 0u64.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let m = rng.below(endpoints.len());
                        if clients[m].is_none() {
                            clients[m] = connect_one(&endpoints[m], false).await.ok();
                        }
                        let Some(c) = clients[m].as_mut() else {
                            tokio::time::sleep(POLL_INTERVAL).await;
                            continue;
                        };
                        let op = gen_op(&mut rng, w, seq);
                        let outcome = execute(c, &op).await;
                        match outcome {
                            Outcome::Acked { .. } => {
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Outcome::Unknown(_) => clients[m] = None,
                        }
                        let failed = clients[m].is_none();
                        ops.lock().unwrap().push(OpRec {
                            writer: w,
                            member: m,
                            op,
                            outcome,
                        });
                        // Pacing; longer after a failure (do not spin on a
                        // dead member).
                        let pause = if failed {
                            POLL_INTERVAL
                        } else {
                            rng.millis(5, 25)
                        };
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            acked,
            ops,
            tasks,
        }
    }

    pub(crate) fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits for `n` more acknowledged writes.
    pub(crate) async fn more(&self, n: u64) {
        let target = self.acked() + n;
        wait_until(&format!("{target} acknowledged writes"), WORK, || async {
            let a = self.acked();
            if a >= target {
                Ok(())
            } else {
                Err(format!("{a} acknowledged"))
            }
        })
        .await;
    }

    /// Stops the writers (each finishes its current write) and returns
    /// every write issued.
    pub(crate) async fn stop(mut self) -> Vec<OpRec> {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(OP_TIMEOUT + Duration::from_secs(2), t).await;
        }
        let ops = self.ops.lock().unwrap().clone();
        ops
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------
// Watchers

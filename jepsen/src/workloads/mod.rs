//! Workloads: what the client workers do, and the watchers.
//!
//! Each worker has its own connection to one member (worker `i` starts on
//! member `i mod N`). An operation is recorded as an invocation and a
//! completion. After an operation of unknown outcome the worker takes a
//! new process number (the old one may still have a request in flight, as
//! in Jepsen) and reconnects to another member (at random); so it does
//! after a refused connection.

pub mod append;
pub mod lock;
pub mod register;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch as signal;

use crate::client;
use crate::history::{Event, EventType, Process, Recorder};
use crate::rng::Rng;

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Reads, writes and compare-and-sets of a few keys at a time.
    Register,
    /// A watcher on every member for the whole run.
    Watch,
    /// Transactions that read lists and append to them.
    Append,
    /// A lease-based mutex with fencing tokens, as `etcdctl lock` builds it.
    Lock,
}

/// What the workers share.
pub struct Ctx {
    /// The history.
    pub recorder: Arc<Recorder>,
    /// Client endpoints, by member.
    pub endpoints: Vec<String>,
    /// Member names.
    pub names: Vec<String>,
    /// Deadline of one operation; past it the outcome is unknown.
    pub op_timeout: Duration,
    /// Number of workers (process numbers advance by it).
    pub concurrency: usize,
    /// Pause between two operations of one worker.
    pub pace: Duration,
}

/// One operation to perform.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// `read`, `write`, `cas` or `put`.
    pub f: &'static str,
    /// The key.
    pub key: String,
    /// Arguments as recorded on invocation.
    pub args: Value,
}

/// The result of an operation: completion type, value, error text.
pub type Completion = (EventType, Value, Option<String>);

/// What the workers do: register operations, append transactions, or
/// both (each operation one or the other at random); blind puts when
/// neither runs (a watch-only or lock-only run).
#[derive(Default)]
pub struct Generator {
    /// Register operations, if that workload runs.
    pub register: Option<register::Registers>,
    /// Append transactions, if that workload runs.
    pub append: Option<append::Appends>,
    /// Blind puts.
    pub puts: watch::Puts,
}

impl Generator {
    fn next(&self, rng: &mut Rng) -> Planned {
        match (&self.register, &self.append) {
            (Some(r), Some(a)) => {
                if rng.chance(0.5) {
                    r.next(rng)
                } else {
                    a.next(rng)
                }
            }
            (Some(r), None) => r.next(rng),
            (None, Some(a)) => a.next(rng),
            (None, None) => self.puts.next(rng),
        }
    }

    async fn execute(&self, c: &mut Client, op: &Planned) -> Completion {
        match op.f {
            append::F_TXN => append::execute(c, op).await,
            "put" => watch::execute_put(c, op).await,
            _ => register::execute(c, op).await,
        }
    }

    fn observe(&self, op: &Planned, done: &Completion) {
        if let Some(g) = &self.register {
            g.observe(op, done);
        }
    }
}

/// The completion for a client error.
pub fn failed(error: impl ToString) -> Completion {
    let e = error.to_string();
    (client::classify(&e), Value::Null, Some(e))
}

/// Sleeps `d`, or less if `stop` is raised; whether to go on.
pub(crate) async fn pause(d: Duration, stop: &mut signal::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

/// One client worker, until `stop` is raised.
pub async fn worker(
    ctx: Arc<Ctx>,
    gen: Arc<Generator>,
    id: usize,
    mut rng: Rng,
    mut stop: signal::Receiver<bool>,
) {
    let n = ctx.endpoints.len().max(1);
    let mut process = id as u64;
    let mut member = id % n;
    let mut conn: Option<Client> = None;
    // Start at a random phase so that workers do not move in lockstep.
    let jitter = Duration::from_millis(rng.below(ctx.pace.as_millis() as u64 + 1));
    if !pause(jitter, &mut stop).await {
        return;
    }
    loop {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match client::connect(&ctx.endpoints[member], ctx.op_timeout).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    member = (member + 1 + rng.index(n.saturating_sub(1).max(1))) % n;
                    if !pause(Duration::from_millis(200), &mut stop).await {
                        return;
                    }
                    continue;
                }
            },
        };
        let op = gen.next(&mut rng);
        let node = ctx.names[member].clone();
        ctx.recorder.record(
            Event::new(
                Process::Worker(process),
                EventType::Invoke,
                op.f,
                op.args.clone(),
            )
            .key(op.key.clone())
            .node(node.clone()),
        );
        let done = match tokio::time::timeout(ctx.op_timeout, gen.execute(c, &op)).await {
            Ok(done) => done,
            Err(_) => (
                EventType::Info,
                Value::Null,
                Some(format!("timeout after {:?}", ctx.op_timeout)),
            ),
        };
        let mut e = Event::new(Process::Worker(process), done.0, op.f, done.1.clone())
            .key(op.key.clone())
            .node(node);
        e.error = done.2.clone();
        ctx.recorder.record(e);
        gen.observe(&op, &done);
        let refused = done.0 == EventType::Fail
            && done.2.as_deref() != Some(crate::checker::register::COMPARE_FAILED);
        if done.0 == EventType::Info {
            process += ctx.concurrency as u64;
        }
        if done.0 == EventType::Info || refused {
            // Another member at random: workers leaving one member do not
            // all crowd onto the same next one.
            member = (member + 1 + rng.index(n.saturating_sub(1).max(1))) % n;
            conn = None;
        }
        if !pause(ctx.pace, &mut stop).await {
            return;
        }
    }
}

//! The lock workload: a lease-based mutex built the way `etcdctl lock`
//! (etcd's `concurrency.Mutex`) builds it, used by a few lockers for the
//! whole run.
//!
//! A session (one process, `lock-<locker>.<session>`) grants a lease,
//! keeps it alive about every third of its TTL (as etcd's clients do),
//! creates `lock/<name>/<lease>` with that lease, and takes the lock when
//! its key has the lowest create revision under the prefix; that revision
//! is its fencing token. While holding, it writes `lock-fence/<name>` a few
//! times in a `Txn` guarded by its key still existing, then deletes the
//! key and revokes the lease. Every step is recorded as an operation of
//! the session's process:
//! * `grant` — ok `{"lease", "ttl", "token"}` (the key's create revision);
//! * `keepalive` — ok `{"ttl"}` (0 or less: the lease is gone);
//! * `poll` — ok `{"present", "holder", "revision"}` (whether its key
//!   exists, whether it is the lowest, the read's revision);
//! * `fenced-write` — ok `{"token", "revision"}`, or `fail` with error
//!   `lock-lost` when the guard found the key gone;
//! * `release` — ok.
//!
//! A step of unknown outcome ends the session (the lease is revoked if it
//! can be) and the locker starts a new one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use serde_json::{json, Value};
use tokio::sync::watch as signal;

use crate::client;
use crate::history::{Event, EventType, Process, Recorder};
use crate::rng::Rng;

use super::pause;

/// The error of a guarded write that found its lock key gone.
pub const LOCK_LOST: &str = "lock-lost";

/// Prefix of the lock sessions' process names.
pub const PROCESS_PREFIX: &str = "lock-";

/// Prefixes of every key this workload writes: the lock keys and the
/// fenced key.
pub const KEY_PREFIXES: [&str; 2] = ["lock/", "lock-fence/"];

/// Lockers per run.
pub const LOCKERS: usize = 4;

/// The TTL a session asks for, in seconds (etcd may raise it to its
/// minimum, 1.5 election timeouts; the granted one is recorded).
const TTL: i64 = 2;

/// Pause between two polls while waiting, and between two guarded writes.
const STEP: Duration = Duration::from_millis(200);

/// Guarded writes per hold.
const WRITES_PER_HOLD: usize = 3;

/// What one session step yields: completion type, value, error.
type Step = (EventType, Value, Option<String>);

struct Session<'a> {
    recorder: &'a Recorder,
    process: Process,
    node: String,
    timeout: Duration,
}

impl Session<'_> {
    /// Records the invocation of `f`, runs `fut` within the deadline and
    /// records its completion.
    async fn step(
        &self,
        f: &str,
        args: Value,
        fut: impl std::future::Future<Output = Step>,
    ) -> Step {
        self.recorder.record(
            Event::new(self.process.clone(), EventType::Invoke, f, args).node(self.node.clone()),
        );
        let done = match tokio::time::timeout(self.timeout, fut).await {
            Ok(d) => d,
            Err(_) => (
                EventType::Info,
                Value::Null,
                Some(format!("timeout after {:?}", self.timeout)),
            ),
        };
        let mut e =
            Event::new(self.process.clone(), done.0, f, done.1.clone()).node(self.node.clone());
        e.error = done.2.clone();
        self.recorder.record(e);
        done
    }
}

fn err(e: impl ToString) -> Step {
    let e = e.to_string();
    (client::classify(&e), Value::Null, Some(e))
}

/// One locker until `stop`: sessions one after another, on member
/// `start` at first and on another one after an error.
#[allow(clippy::too_many_arguments)]
pub async fn locker(
    recorder: Arc<Recorder>,
    endpoints: Vec<String>,
    names: Vec<String>,
    id: usize,
    lock: String,
    mut rng: Rng,
    timeout: Duration,
    mut stop: signal::Receiver<bool>,
) {
    let n = endpoints.len().max(1);
    let mut member = id % n;
    let mut session = 0u64;
    while !*stop.borrow() {
        session += 1;
        let s = Session {
            recorder: &recorder,
            process: Process::named(format!("{PROCESS_PREFIX}{id}.{session}")),
            node: names[member].clone(),
            timeout,
        };
        let clean = match client::connect(&endpoints[member], timeout).await {
            Ok(mut c) => run_session(&s, &mut c, &lock, &mut rng, &mut stop).await,
            Err(_) => false,
        };
        if !clean {
            member = (member + 1 + rng.index(n.saturating_sub(1).max(1))) % n;
            tokio::select! {
                _ = tokio::time::sleep(STEP) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// One session; whether it ended without error.
async fn run_session(
    s: &Session<'_>,
    c: &mut Client,
    lock: &str,
    rng: &mut Rng,
    stop: &mut signal::Receiver<bool>,
) -> bool {
    let prefix = format!("{}{lock}/", KEY_PREFIXES[0]);
    // Grant a lease and create the key.
    let mut granted = (0i64, 0i64, 0i64, String::new());
    let g = s
        .step("grant", json!({ "lock": lock }), async {
            let lease = match c.lease_grant(TTL, None).await {
                Ok(r) => r,
                Err(e) => return err(e),
            };
            let key = format!("{prefix}{:x}", lease.id());
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    "",
                    Some(PutOptions::new().with_lease(lease.id())),
                )])
                .or_else([TxnOp::get(key.as_str(), None)]);
            match c.txn(txn).await {
                Ok(r) if r.succeeded() => {
                    let token = r.header().map_or(0, |h| h.revision());
                    granted = (lease.id(), lease.ttl(), token, key);
                    (
                        EventType::Ok,
                        json!({ "lease": lease.id(), "ttl": lease.ttl(), "token": token }),
                        None,
                    )
                }
                Ok(_) => (
                    EventType::Info,
                    Value::Null,
                    Some("lock key already exists".into()),
                ),
                Err(e) => err(e),
            }
        })
        .await;
    if g.0 != EventType::Ok {
        // Refused or unknown: try another member after a pause.
        return false;
    }
    let (lease, ttl, token, key) = granted;
    let (mut keeper, mut acks) = match c.lease_keep_alive(lease).await {
        Ok(k) => k,
        Err(_) => {
            let _ = c.lease_revoke(lease).await;
            return false;
        }
    };
    let keep_every = Duration::from_millis((ttl.max(1) as u64) * 1000 / 3);
    let mut last_keepalive = Instant::now();
    let mut holding = false;
    let mut writes = 0usize;
    let ok = loop {
        if !pause(STEP + Duration::from_millis(rng.below(50)), stop).await {
            break true;
        }
        if last_keepalive.elapsed() >= keep_every {
            last_keepalive = Instant::now();
            let k = s
                .step("keepalive", json!({ "lease": lease }), async {
                    if let Err(e) = keeper.keep_alive().await {
                        return err(e);
                    }
                    match acks.message().await {
                        Ok(Some(r)) => (EventType::Ok, json!({ "ttl": r.ttl() }), None),
                        Ok(None) => (
                            EventType::Info,
                            Value::Null,
                            Some("keep-alive stream ended".into()),
                        ),
                        Err(e) => err(e),
                    }
                })
                .await;
            match k {
                (EventType::Ok, v, _) if v["ttl"].as_i64().unwrap_or(0) > 0 => {}
                (EventType::Ok, _, _) => break true,
                _ => break false,
            }
        }
        if !holding {
            let p = s
                .step("poll", json!({ "token": token }), async {
                    let opts = GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Create, SortOrder::Ascend)
                        .with_keys_only();
                    match c.get(prefix.as_str(), Some(opts)).await {
                        Ok(r) => {
                            let present = r.kvs().iter().any(|kv| kv.key() == key.as_bytes());
                            let holder = r.kvs().first().is_some_and(|kv| kv.key() == key.as_bytes());
                            let revision = r.header().map_or(0, |h| h.revision());
                            (
                                EventType::Ok,
                                json!({ "present": present, "holder": holder, "revision": revision }),
                                None,
                            )
                        }
                        Err(e) => err(e),
                    }
                })
                .await;
            match p {
                (EventType::Ok, v, _) if v["holder"] == true => holding = true,
                (EventType::Ok, v, _) if v["present"] == true => {}
                (EventType::Ok, _, _) => break true,
                _ => break false,
            }
            continue;
        }
        if writes == WRITES_PER_HOLD {
            break true;
        }
        writes += 1;
        let w = s
            .step("fenced-write", json!({ "token": token }), async {
                let txn = Txn::new()
                    .when([Compare::create_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        token,
                    )])
                    .and_then([TxnOp::put(
                        format!("{}{lock}", KEY_PREFIXES[1]),
                        token.to_string(),
                        None,
                    )]);
                match c.txn(txn).await {
                    Ok(r) if r.succeeded() => {
                        let revision = r.header().map_or(0, |h| h.revision());
                        (
                            EventType::Ok,
                            json!({ "token": token, "revision": revision }),
                            None,
                        )
                    }
                    Ok(_) => (
                        EventType::Fail,
                        json!({ "token": token }),
                        Some(LOCK_LOST.into()),
                    ),
                    Err(e) => err(e),
                }
            })
            .await;
        match w.0 {
            EventType::Ok => {}
            EventType::Fail if w.2.as_deref() == Some(LOCK_LOST) => break true,
            _ => break false,
        }
    };
    // Release: delete the key, revoke the lease.
    let r = s
        .step("release", json!({ "lease": lease }), async {
            if let Err(e) = c.delete(key.as_str(), None).await {
                return err(e);
            }
            match c.lease_revoke(lease).await {
                Ok(_) => (EventType::Ok, Value::Null, None),
                // Already expired (or revoked): the key is gone too.
                Err(e) if e.to_string().contains("lease not found") => {
                    (EventType::Ok, Value::Null, None)
                }
                Err(e) => err(e),
            }
        })
        .await;
    ok && r.0 == EventType::Ok
}

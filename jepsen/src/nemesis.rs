//! The nemesis: faults on a schedule, one at a time, with quiet periods
//! between them, each recorded in the history (process `nemesis`) when it
//! begins and when it ends.
//!
//! * `kill`: `SIGKILL` the leader or a random member; restart it on the
//!   same data directory when the fault ends.
//! * `pause`: `SIGSTOP` the leader or a random member; `SIGCONT` it.
//! * `partition`: isolate the leader or a random member, or split the
//!   members at random into a minority and a majority, through the proxy;
//!   heal.
//! * `bridge`: Jepsen's bridge through the proxy: the members shuffled,
//!   the first half and the second half cannot talk to each other, the
//!   member in the middle talks to both (with 3 members: B talks to A and
//!   C, which cannot talk to each other); heal.
//! * `member`: remove the leader or a random member with `MemberRemove`
//!   (`member-remove`) through another member, stop it and wipe its data
//!   directory; when the fault ends, `MemberAdd` it back with the same
//!   peer URL (`member-add`; it gets a new member ID, keeps its name) and
//!   start it with `--initial-cluster-state existing`, until it serves.
//! * `compact`: `Compact` (physical) at a revision below what every
//!   watcher has received (without watchers: 100 below the current
//!   revision), then `Defragment` every member, one after the other. The
//!   highest compaction that may have applied is kept
//!   ([`Nemesis::compacted`]): the end-of-run history read starts above it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::CompactionOptions;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch as signal;

use crate::checker::cluster::F_START_FAILED;
use crate::client;
use crate::db::Cluster;
use crate::history::{Event, EventType, Process, Recorder};
use crate::proxy::{Links, Proxy};
use crate::rng::Rng;
use crate::workloads::watch::Progress;

/// The `f` of a compaction (process `nemesis`): invoke value
/// `{"revision": C, ...}`; ok, or info when it may have applied.
pub const F_COMPACT: &str = crate::checker::watch::F_COMPACT;
/// The `f` of a member's defragmentation (process `nemesis`).
pub const F_DEFRAGMENT: &str = "defragment";
/// The `f` of a member's removal (process `nemesis`).
pub const F_MEMBER_REMOVE: &str = "member-remove";
/// The `f` of a removed member's return (process `nemesis`).
pub const F_MEMBER_ADD: &str = "member-add";

/// The faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// kill -9 and restart.
    Kill,
    /// SIGSTOP and SIGCONT.
    Pause,
    /// Network partitions through the proxy.
    Partition,
    /// A bridge partition through the proxy.
    Bridge,
    /// A member removed, wiped and added back.
    Member,
    /// Compaction and defragmentation.
    Compact,
}

impl Fault {
    /// The name used by `--nemesis`.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::Bridge => "bridge",
            Fault::Member => "member",
            Fault::Compact => "compact",
        }
    }

    /// Every fault.
    pub const ALL: [Fault; 6] = [
        Fault::Kill,
        Fault::Pause,
        Fault::Partition,
        Fault::Bridge,
        Fault::Member,
        Fault::Compact,
    ];

    /// The fault named `name`.
    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// The fault in force.
enum Active {
    Killed(usize),
    Paused(usize),
    Partitioned,
    /// Member `i`, whose ID was `id`, is removed (or its removal's outcome
    /// is unknown), stopped and wiped.
    Removed {
        i: usize,
        id: u64,
    },
}

/// Injects faults into a cluster.
pub struct Nemesis {
    cluster: Arc<Cluster>,
    proxy: Arc<Proxy>,
    recorder: Arc<Recorder>,
    faults: Vec<Fault>,
    rng: Rng,
    interval: Duration,
    status: Arc<Mutex<String>>,
    progress: Option<Arc<Progress>>,
    compacted: Arc<AtomicI64>,
    /// A removed member whose return failed, to try again when healing.
    removed: Option<(usize, u64)>,
}

/// How long a member may take to come back.
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a membership change may be retried (etcd refuses one while
/// the cluster is not healthy, `--strict-reconfig-check`).
const MEMBER_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a compaction or a defragmentation may take.
const MAINTENANCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Without watchers, compactions keep this many revisions.
const COMPACT_KEEP: i64 = 100;

impl Nemesis {
    /// A nemesis of `faults`, roughly one every `interval`.
    pub fn new(
        cluster: Arc<Cluster>,
        proxy: Arc<Proxy>,
        recorder: Arc<Recorder>,
        faults: Vec<Fault>,
        rng: Rng,
        interval: Duration,
    ) -> Self {
        Nemesis {
            cluster,
            proxy,
            recorder,
            faults,
            rng,
            interval,
            status: Arc::new(Mutex::new(String::from("none"))),
            progress: None,
            compacted: Arc::new(AtomicI64::new(0)),
            removed: None,
        }
    }

    /// Compacts below what the watchers of `progress` have received.
    pub fn with_watch_progress(mut self, progress: Arc<Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// The highest revision compacted so far (0: none), counting
    /// compactions whose outcome is unknown: the history at or below it
    /// may be gone.
    pub fn compacted(&self) -> Arc<AtomicI64> {
        self.compacted.clone()
    }

    /// What is in force now, for the progress line.
    pub fn status(&self) -> Arc<Mutex<String>> {
        self.status.clone()
    }

    fn set_status(&self, s: String) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    fn record(&self, kind: EventType, f: &str, value: Value, error: Option<String>) {
        let mut e = Event::new(Process::named("nemesis"), kind, f, value);
        e.error = error;
        self.recorder.record(e);
    }

    /// Runs the schedule until `stop` is raised, then ends the fault in
    /// force.
    pub async fn run(mut self, mut stop: signal::Receiver<bool>) -> Self {
        if self.faults.is_empty() {
            let _ = stop.changed().await;
            return self;
        }
        loop {
            let quiet = self.rng.duration(self.interval / 2, self.interval);
            if !sleep_unless(quiet, &mut stop).await || *stop.borrow() {
                return self;
            }
            let active = self.inject().await;
            let length = self.rng.duration(self.interval, self.interval * 2);
            let go_on = sleep_unless(length, &mut stop).await;
            if let Some(a) = active {
                self.end(a).await;
            }
            if !go_on {
                return self;
            }
        }
    }

    /// The leader (half the time, if known) or a random member, and how it
    /// was chosen, for the history: `{"node", "chosen", "leader"}` (whether
    /// it is the leader, `null` if no leader was known).
    async fn target(&mut self) -> (usize, Value) {
        // Both draws always, so the random stream does not depend on
        // whether a leader was known.
        let (want_leader, random) = (self.rng.chance(0.5), self.rng.index(self.cluster.len()));
        let leader = self.cluster.leader().await;
        let (i, chosen) = match leader {
            Some(l) if want_leader => (l, "leader"),
            _ => (random, "random"),
        };
        let v = json!({
            "node": self.name(i),
            "chosen": chosen,
            "leader": leader.map(|l| l == i),
        });
        (i, v)
    }

    fn name(&self, i: usize) -> String {
        self.cluster.names().get(i).cloned().unwrap_or_default()
    }

    async fn inject(&mut self) -> Option<Active> {
        let n = self.cluster.len();
        // Only one member down at a time: wait for the last one to be back.
        if (0..n).any(|i| !self.cluster.is_up(i)) {
            return None;
        }
        let fault = self.faults[self.rng.index(self.faults.len())];
        match fault {
            Fault::Kill => {
                let (i, v) = self.target().await;
                self.record(EventType::Invoke, "kill", v.clone(), None);
                self.cluster.kill(i);
                self.record(EventType::Ok, "kill", v, None);
                self.set_status(format!("kill {}", self.name(i)));
                Some(Active::Killed(i))
            }
            Fault::Pause => {
                let (i, v) = self.target().await;
                self.record(EventType::Invoke, "pause", v.clone(), None);
                self.cluster.pause(i);
                self.record(EventType::Ok, "pause", v, None);
                self.set_status(format!("pause {}", self.name(i)));
                Some(Active::Paused(i))
            }
            Fault::Partition => {
                let groups = self.split().await;
                let desc = describe(&groups, self.cluster.names());
                let leader = self.cluster.leader().await.map(|l| self.name(l));
                let v = json!({ "groups": desc, "leader": leader });
                self.record(EventType::Invoke, "partition", v.clone(), None);
                self.proxy.partition(groups);
                self.record(EventType::Ok, "partition", v, None);
                let text: Vec<String> = desc.iter().map(|g| g.join(" ")).collect();
                self.set_status(format!("partition {}", text.join(" | ")));
                Some(Active::Partitioned)
            }
            Fault::Bridge => self.bridge().await,
            Fault::Member => self.remove_member().await,
            Fault::Compact => {
                self.compact().await;
                None
            }
        }
    }

    /// A random member other than `i`, among those running and not paused
    /// (one random draw whatever happens).
    fn other(&mut self, i: usize) -> Option<usize> {
        let n = self.cluster.len();
        let k = self.rng.index(n.max(2) - 1);
        let cands: Vec<usize> = (0..n)
            .filter(|&j| j != i && self.cluster.is_up(j) && !self.cluster.is_paused(j))
            .collect();
        (!cands.is_empty()).then(|| cands[k % cands.len()])
    }

    /// The bridge: halves of the shuffled members joined only through the
    /// member between them.
    async fn bridge(&mut self) -> Option<Active> {
        let n = self.cluster.len();
        let mut order: Vec<usize> = (0..n).collect();
        self.rng.shuffle(&mut order);
        if n < 3 {
            return None;
        }
        let (left, rest) = order.split_at(n / 2);
        let (bridge, right) = (rest[0], &rest[1..]);
        let names = |is: &[usize]| -> Vec<String> { is.iter().map(|&i| self.name(i)).collect() };
        let groups = vec![names(left), vec![self.name(bridge)], names(right)];
        let leader = self.cluster.leader().await.map(|l| self.name(l));
        let v = json!({ "groups": groups, "bridge": self.name(bridge), "leader": leader });
        self.record(EventType::Invoke, "bridge", v.clone(), None);
        self.proxy.cut_links(Links::bridge(n, left, bridge, right));
        self.record(EventType::Ok, "bridge", v, None);
        let text: Vec<String> = groups.iter().map(|g| g.join(" ")).collect();
        self.set_status(format!("bridge {}", text.join(" | ")));
        Some(Active::Partitioned)
    }

    /// Removes a member (the leader half the time) through another one,
    /// stops it and wipes its data.
    async fn remove_member(&mut self) -> Option<Active> {
        let (i, mut v) = self.target().await;
        let via = self.other(i)?;
        v["via"] = json!(self.name(via));
        let id = match self.cluster.member_id(i).await {
            Ok(id) => id,
            Err(e) => {
                self.record(EventType::Invoke, F_MEMBER_REMOVE, v.clone(), None);
                let e = format!("its member ID is unknown: {e}");
                self.record(EventType::Fail, F_MEMBER_REMOVE, v, Some(e));
                return None;
            }
        };
        v["id"] = json!(format!("{id:x}"));
        self.record(EventType::Invoke, F_MEMBER_REMOVE, v.clone(), None);
        // etcd stops a member once it applies its own removal.
        self.cluster.set_exit_expected(i, true);
        let deadline = Instant::now() + MEMBER_CHANGE_TIMEOUT;
        match self.cluster.remove(via, id, deadline).await {
            Ok(()) => self.record(EventType::Ok, F_MEMBER_REMOVE, v, None),
            Err((EventType::Fail, e)) => {
                self.cluster.set_exit_expected(i, false);
                self.record(EventType::Fail, F_MEMBER_REMOVE, v, Some(e));
                return None;
            }
            // Perhaps removed: it is stopped and wiped all the same, and
            // its old ID removed for certain before it comes back.
            Err((_, e)) => self.record(EventType::Info, F_MEMBER_REMOVE, v, Some(e)),
        }
        self.cluster.kill(i);
        if let Err(e) = self.cluster.wipe(i) {
            eprintln!("ballast-jepsen: {e:#}");
        }
        self.set_status(format!("member {} removed", self.name(i)));
        Some(Active::Removed { i, id })
    }

    /// Adds removed member `i` (old ID `id`) back and starts it on an empty
    /// data directory. `false` if it could not be added back (to be tried
    /// again); a member added but not started (recorded as a start
    /// failure) is started again by [`Nemesis::heal_all`].
    async fn add_member(&mut self, i: usize, id: u64) -> bool {
        let name = self.name(i);
        let Some(via) = self.other(i) else {
            let v = json!({ "node": name });
            self.record(EventType::Invoke, F_MEMBER_ADD, v.clone(), None);
            let e = "no other member is running".to_string();
            self.record(EventType::Fail, F_MEMBER_ADD, v, Some(e));
            return false;
        };
        let mut v = json!({
            "node": name,
            "via": self.name(via),
            "peer_url": self.cluster.peer_urls()[i],
            "old_id": format!("{id:x}"),
        });
        self.record(EventType::Invoke, F_MEMBER_ADD, v.clone(), None);
        let deadline = Instant::now() + MEMBER_CHANGE_TIMEOUT;
        // The old ID must be gone first (its removal may have failed).
        if let Err((kind, e)) = self.cluster.remove(via, id, deadline).await {
            let e = format!("the old member {id:x} is still in the cluster: {e}");
            self.record(kind, F_MEMBER_ADD, v, Some(e));
            return false;
        }
        let (new_id, list) = match self.cluster.add(via, i, id, deadline).await {
            Ok(added) => added,
            Err((kind, e)) => {
                self.record(kind, F_MEMBER_ADD, v, Some(e));
                return false;
            }
        };
        v["id"] = json!(format!("{new_id:x}"));
        let Some(initial) = self.cluster.initial_cluster_of(&list) else {
            let e = format!("the member list has peer URLs that are not ours: {list:?}");
            self.record(EventType::Info, F_MEMBER_ADD, v, Some(e));
            return false;
        };
        v["initial_cluster"] = json!(initial);
        self.cluster.set_joining(i, &initial);
        let started = match self.cluster.wipe(i) {
            Ok(()) => self.cluster.start_and_wait(i, RESTART_TIMEOUT).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(()) => {
                self.cluster.set_exit_expected(i, false);
                self.record(EventType::Ok, F_MEMBER_ADD, v, None);
                true
            }
            Err(e) => {
                // It stays added; healing starts it again.
                self.cluster.kill(i);
                self.cluster.set_exit_expected(i, false);
                let e = format!("{e:#}");
                self.record(EventType::Info, F_MEMBER_ADD, v, Some(e.clone()));
                self.start_failed(i, &e);
                true
            }
        }
    }

    /// The revision to compact at: below what every watcher received, or
    /// [`COMPACT_KEEP`] below the current revision; and on what it is based.
    async fn compaction_point(&self) -> Option<(i64, Value)> {
        if let Some(p) = &self.progress {
            let lasts: Vec<i64> = (0..self.cluster.len()).map(|i| p.last(i)).collect();
            let min = lasts.iter().copied().min()?;
            return Some((min - 1, json!({ "watchers": lasts })));
        }
        for (i, ep) in self.cluster.endpoints().iter().enumerate() {
            if self.cluster.is_up(i) && !self.cluster.is_paused(i) {
                if let Ok(s) = client::status(ep).await {
                    let current = s.revision;
                    return Some((current - COMPACT_KEEP, json!({ "current": current })));
                }
            }
        }
        None
    }

    /// Compacts (see [`Fault::Compact`]) and defragments every member.
    async fn compact(&mut self) {
        let via = self.rng.index(self.cluster.len());
        let floor = self.compacted.load(Ordering::Relaxed);
        let Some((rev, basis)) = self.compaction_point().await else {
            return;
        };
        if rev <= floor.max(1) {
            self.set_status(format!("compact: nothing new below revision {}", rev + 1));
            return;
        }
        let mut v = json!({ "revision": rev, "via": self.name(via) });
        if let (Some(v), Some(b)) = (v.as_object_mut(), basis.as_object()) {
            v.extend(b.clone());
        }
        self.record(EventType::Invoke, F_COMPACT, v.clone(), None);
        let ep = self.cluster.endpoints()[via].clone();
        let r = async {
            let mut c = client::connect(&ep, MAINTENANCE_TIMEOUT).await?;
            let opts = CompactionOptions::new().with_physical();
            client::timed(MAINTENANCE_TIMEOUT, c.compact(rev, Some(opts))).await
        }
        .await;
        let ok = match r {
            Ok(_) => {
                self.record(EventType::Ok, F_COMPACT, json!({ "revision": rev }), None);
                true
            }
            Err(e) => {
                let kind = client::classify(&e);
                self.record(kind, F_COMPACT, json!({ "revision": rev }), Some(e));
                kind != EventType::Fail
            }
        };
        if ok {
            self.compacted.fetch_max(rev, Ordering::Relaxed);
        }
        self.set_status(format!("compact at {rev}, defragment"));
        for i in 0..self.cluster.len() {
            if !self.cluster.is_up(i) || self.cluster.is_paused(i) {
                continue;
            }
            let name = self.name(i);
            let v = json!({ "node": name });
            let ep = self.cluster.endpoints()[i].clone();
            let ev = |kind, v, e: Option<String>| {
                let mut e2 = Event::new(Process::named("nemesis"), kind, F_DEFRAGMENT, v);
                e2.error = e;
                e2.node(name.clone())
            };
            self.recorder.record(ev(EventType::Invoke, v.clone(), None));
            let r = async {
                let mut c = client::connect(&ep, MAINTENANCE_TIMEOUT).await?;
                client::timed(MAINTENANCE_TIMEOUT, c.defragment()).await
            }
            .await;
            match r {
                Ok(_) => self.recorder.record(ev(EventType::Ok, v, None)),
                Err(e) => self.recorder.record(ev(client::classify(&e), v, Some(e))),
            };
        }
        self.set_status(format!("compacted at {rev}"));
    }

    /// A partition: one member (the leader, or at random) alone, or a
    /// random minority against the majority.
    async fn split(&mut self) -> Vec<usize> {
        let n = self.cluster.len();
        let mut order: Vec<usize> = (0..n).collect();
        self.rng.shuffle(&mut order);
        let minority = if self.rng.chance(0.5) {
            vec![self.target().await.0]
        } else {
            order[..(n / 2).max(1)].to_vec()
        };
        (0..n).map(|i| usize::from(minority.contains(&i))).collect()
    }

    async fn end(&mut self, active: Active) {
        match active {
            Active::Killed(i) => self.restart(i).await,
            Active::Paused(i) => {
                let v = json!({ "node": self.name(i) });
                self.record(EventType::Invoke, "resume", v.clone(), None);
                self.cluster.resume(i);
                self.record(EventType::Ok, "resume", v, None);
            }
            Active::Partitioned => {
                self.record(EventType::Invoke, "heal", Value::Null, None);
                self.proxy.heal();
                self.record(EventType::Ok, "heal", Value::Null, None);
            }
            Active::Removed { i, id } => {
                if !self.add_member(i, id).await {
                    self.removed = Some((i, id));
                }
            }
        }
        self.set_status("none".into());
    }

    /// Records that member `i` could not be started (`error`).
    fn start_failed(&self, i: usize, error: &str) {
        self.recorder.record(
            Event::new(
                Process::named("monitor"),
                EventType::Info,
                F_START_FAILED,
                Value::Null,
            )
            .node(self.name(i))
            .error(error.lines().next().unwrap_or_default().to_string()),
        );
    }

    async fn restart(&self, i: usize) {
        let v = json!({ "node": self.name(i) });
        self.record(EventType::Invoke, "restart", v.clone(), None);
        match self.cluster.start_and_wait(i, RESTART_TIMEOUT).await {
            Ok(()) => self.record(EventType::Ok, "restart", v, None),
            Err(e) => {
                let e = format!("{e:#}");
                self.record(EventType::Info, "restart", v, Some(e.clone()));
                self.start_failed(i, &e);
            }
        }
    }

    /// Ends every fault: heals the network, resumes paused members, adds
    /// back a removed member whose return failed, and starts every member
    /// that is down.
    pub async fn heal_all(&mut self) {
        self.proxy.heal();
        for i in 0..self.cluster.len() {
            if self.cluster.is_paused(i) {
                self.cluster.resume(i);
            }
        }
        let removed = self.removed.take();
        for i in 0..self.cluster.len() {
            if !self.cluster.is_up(i) && removed.map(|r| r.0) != Some(i) {
                self.restart(i).await;
            }
        }
        if let Some((i, id)) = removed {
            if !self.add_member(i, id).await {
                self.start_failed(i, "the removed member could not be added back");
            }
        }
        self.set_status("healed".into());
    }
}

/// Member names by group.
fn describe(groups: &[usize], names: &[String]) -> Vec<Vec<String>> {
    let k = groups.iter().max().map_or(0, |m| m + 1);
    (0..k)
        .map(|g| {
            groups
                .iter()
                .enumerate()
                .filter(|(_, &x)| x == g)
                .map(|(i, _)| names.get(i).cloned().unwrap_or_default())
                .collect()
        })
        .collect()
}

/// Sleeps `d` unless `stop` is raised first; whether it was not.
async fn sleep_unless(d: Duration, stop: &mut signal::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.changed() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_groups() {
        let names: Vec<String> = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            describe(&[1, 0, 1], &names),
            vec![
                vec!["n2".to_string()],
                vec!["n1".to_string(), "n3".to_string()]
            ]
        );
    }

    #[test]
    fn fault_names_round_trip() {
        for f in Fault::ALL {
            assert_eq!(Fault::parse(f.name()), Some(f));
        }
        assert_eq!(Fault::parse("bridge"), Some(Fault::Bridge));
        assert_eq!(Fault::parse("none"), None);
    }
}

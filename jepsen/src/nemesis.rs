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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch as signal;

use crate::checker::cluster::F_START_FAILED;
use crate::db::Cluster;
use crate::history::{Event, EventType, Process, Recorder};
use crate::proxy::Proxy;
use crate::rng::Rng;

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
}

/// The fault in force.
enum Active {
    Killed(usize),
    Paused(usize),
    Partitioned,
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
}

/// How long a member may take to come back.
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);

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
        }
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
        }
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
        }
        self.set_status("none".into());
    }

    async fn restart(&self, i: usize) {
        let v = json!({ "node": self.name(i) });
        self.record(EventType::Invoke, "restart", v.clone(), None);
        match self.cluster.start_and_wait(i, RESTART_TIMEOUT).await {
            Ok(()) => self.record(EventType::Ok, "restart", v, None),
            Err(e) => {
                let e = format!("{e:#}");
                self.record(EventType::Info, "restart", v, Some(e.clone()));
                self.recorder.record(
                    Event::new(
                        Process::named("monitor"),
                        EventType::Info,
                        F_START_FAILED,
                        Value::Null,
                    )
                    .node(self.name(i))
                    .error(e.lines().next().unwrap_or_default().to_string()),
                );
            }
        }
    }

    /// Ends every fault: heals the network, resumes paused members and
    /// starts every member that is down.
    pub async fn heal_all(&self) {
        self.proxy.heal();
        for i in 0..self.cluster.len() {
            if self.cluster.is_paused(i) {
                self.cluster.resume(i);
            }
        }
        for i in 0..self.cluster.len() {
            if !self.cluster.is_up(i) {
                self.restart(i).await;
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
}

//! `ballast-jepsen`: linearizability testing with fault injection for
//! clusters speaking the etcd v3 protocol (Ballast or etcd itself).
//!
//! A run starts N members as child processes behind a fault-injecting
//! peer proxy ([`proxy`]), drives client workloads ([`workloads`]) while a
//! nemesis ([`nemesis`]) kills, pauses and partitions members, records
//! every operation ([`history`]), and checks the history ([`checker`]);
//! [`report`] draws it. See `docs/jepsen.md`.

pub mod checker;
pub mod client;
pub mod db;
pub mod history;
pub mod nemesis;
pub mod procnet;
pub mod proxy;
pub mod report;
pub mod rng;
pub mod run;
pub mod workloads;

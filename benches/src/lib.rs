//! Benchmarks of Ballast.
//!
//! - `benches/engine.rs`: criterion micro-benchmarks of the MVCC engine on
//!   its own; `benches/raft_apply.rs`: of the Raft apply path (the state
//!   machine, and a one-member node's writes). See `../README.md`.
//! - `ballast-bench` (`src/bin/ballast-bench.rs`): a load tool modelled on
//!   etcd's `benchmark`, for any etcd v3 endpoint (Ballast or etcd). Its
//!   parts live here: [`workload`] (what one request is), [`runner`] (clients,
//!   rate, timeouts, deadline, progress), [`stats`] and [`report`] (latency
//!   percentiles, error classes, the table and the JSON line).
//! - `ballast-bench chart`: SVG charts of a `scripts/bench-compare.sh` run
//!   ([`compare`] reads its JSON lines, [`chart`] draws the bars).

pub mod chart;
pub mod compare;
pub mod duration;
pub mod report;
pub mod rng;
pub mod runner;
pub mod stats;
pub mod streams;
pub mod workload;

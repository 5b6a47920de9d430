//! Deliberate bugs, to prove that the linearizability harness (`jepsen/`)
//! catches what it claims to. They exist only in builds with the
//! `fault-injection` cargo feature, where `BALLAST_FAULTS` (a
//! comma-separated list) turns them on for one process; in every other
//! build [`faults`] is all off and the checks compile away.
//!
//! | name | bug |
//! |---|---|
//! | `stale-reads` | linearizable reads are served locally, without ReadIndex |
//! | `early-lease-expiry` | the leader expires leases after a third of their TTL |
//! | `drop-watch-event` | one watch event per member process is never delivered |

/// Which deliberate bugs are on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Linearizable reads skip the ReadIndex barrier.
    pub stale_reads: bool,
    /// Lease deadlines are a third of the TTL.
    pub early_lease_expiry: bool,
    /// Exactly one event this process sends on its gRPC watch streams
    /// (ballast-server's `watch::DROPPED_WATCH_EVENT`-th) is left out.
    pub drop_watch_event: bool,
}

/// The environment variable naming the faults to turn on.
pub const FAULTS_ENV: &str = "BALLAST_FAULTS";

impl Faults {
    /// Every fault off.
    pub const NONE: Faults = Faults {
        stale_reads: false,
        early_lease_expiry: false,
        drop_watch_event: false,
    };

    /// Parses a comma-separated list of fault names.
    pub fn parse(list: &str) -> Result<Faults, String> {
        let mut f = Faults::NONE;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "stale-reads" => f.stale_reads = true,
                "early-lease-expiry" => f.early_lease_expiry = true,
                "drop-watch-event" => f.drop_watch_event = true,
                other => {
                    return Err(format!(
                        "unknown fault {other:?} in {FAULTS_ENV} (known: stale-reads, early-lease-expiry, drop-watch-event)"
                    ))
                }
            }
        }
        Ok(f)
    }

    /// Whether any fault is on.
    pub fn any(&self) -> bool {
        *self != Faults::NONE
    }
}

/// The faults of this process: from `BALLAST_FAULTS` in builds with the
/// `fault-injection` feature (an unparsable list turns none on; the server
/// refuses to start with it, see [`check_faults_env`]), none otherwise.
#[cfg(feature = "fault-injection")]
pub fn faults() -> &'static Faults {
    static FAULTS: std::sync::OnceLock<Faults> = std::sync::OnceLock::new();
    FAULTS.get_or_init(|| {
        std::env::var(FAULTS_ENV)
            .ok()
            .and_then(|v| Faults::parse(&v).ok())
            .unwrap_or_default()
    })
}

/// The faults of this process: none (built without `fault-injection`).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn faults() -> &'static Faults {
    &Faults::NONE
}

/// Checks `BALLAST_FAULTS` at startup: an error for an unknown name, or
/// for any fault in a build without the `fault-injection` feature; the
/// faults turned on otherwise.
pub fn check_faults_env() -> Result<Faults, String> {
    let Ok(list) = std::env::var(FAULTS_ENV) else {
        return Ok(Faults::NONE);
    };
    let wanted = Faults::parse(&list)?;
    if wanted.any() && !cfg!(feature = "fault-injection") {
        return Err(format!(
            "{FAULTS_ENV}={list:?}, but this build has no fault injection (build with --features fault-injection)"
        ));
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists_parse() {
        assert_eq!(Faults::parse("").unwrap(), Faults::NONE);
        let f = Faults::parse("stale-reads, ").unwrap();
        assert!(f.stale_reads && !f.early_lease_expiry && !f.drop_watch_event);
        let f = Faults::parse(" drop-watch-event ,early-lease-expiry").unwrap();
        assert_eq!(
            f,
            Faults {
                drop_watch_event: true,
                early_lease_expiry: true,
                ..Faults::NONE
            }
        );
        assert!(f.any());
        let err = Faults::parse("stale-reads,bogus").unwrap_err();
        assert!(err.contains("drop-watch-event"), "{err}");
    }
}

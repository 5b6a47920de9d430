//! What the integration tests need: the server binaries.

use std::path::PathBuf;

/// The `ballast` binary: `$BALLAST_BIN`, else the one in the same target
/// directory as `ballast-jepsen` (build it first: `cargo build -p
/// ballast-server`, or `cargo build --workspace --bins` as CI does).
///
/// # Panics
/// If it does not exist.
#[allow(dead_code)]
pub fn ballast_bin() -> PathBuf {
    let p = std::env::var_os("BALLAST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_BIN_EXE_ballast-jepsen"))
                .with_file_name(format!("ballast{}", std::env::consts::EXE_SUFFIX))
        });
    assert!(
        p.is_file(),
        "{} not found; build it first: cargo build -p ballast-server",
        p.display()
    );
    p
}

/// The `ballast` binary built with the `fault-injection` feature:
/// `$BALLAST_FAULTY_BIN`, else `ballast-fault-injection` beside
/// `ballast-jepsen` (scripts/test.sh builds it:
/// `cargo build -p ballast-server --features fault-injection` and copies
/// the binary under that name).
///
/// # Panics
/// If it does not exist.
#[allow(dead_code)]
pub fn faulty_ballast_bin() -> PathBuf {
    let p = std::env::var_os("BALLAST_FAULTY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_BIN_EXE_ballast-jepsen")).with_file_name(format!(
                "ballast-fault-injection{}",
                std::env::consts::EXE_SUFFIX
            ))
        });
    assert!(
        p.is_file(),
        "{} not found; build it first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// etcd, if installed (`$ETCD_BIN`, else `/usr/bin/etcd`).
#[allow(dead_code)]
pub fn etcd_bin() -> Option<PathBuf> {
    let p = std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    p.is_file().then_some(p)
}

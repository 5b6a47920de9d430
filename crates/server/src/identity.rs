//! The member's identity (member and cluster IDs) and data directory layout.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Who this member is. Derived as etcd derives it on first start, then
/// persisted in the data directory, so it never changes afterwards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The member's name (`--name`).
    pub name: String,
    /// The member ID.
    pub member_id: u64,
    /// The cluster ID.
    pub cluster_id: u64,
}

/// Paths inside a member's data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// The MVCC engine's RocksDB database.
    pub fn kv(&self) -> PathBuf {
        self.root.join("member").join("kv")
    }

    /// Scratch space for snapshots being sent to clients (emptied at start).
    pub fn snapshot_tmp(&self) -> PathBuf {
        self.root.join("member").join("snapshot.tmp")
    }

    /// Locks the data directory for this process (released when the file
    /// is dropped or the process exits), before anything in it is opened,
    /// so a second member on the same directory is refused without
    /// touching a file.
    pub fn lock(&self) -> Result<fs::File, String> {
        use std::os::unix::io::AsRawFd;
        let member = self.root.join("member");
        fs::create_dir_all(&member).map_err(|e| format!("{}: {e}", member.display()))?;
        let path = member.join("ballast.lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: flock(2) on a file descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(format!(
                "{}: the data directory is locked by another running member",
                self.root.display()
            ));
        }
        Ok(f)
    }

    /// The Raft log database.
    pub fn raft_log(&self) -> PathBuf {
        self.root.join("member").join("raft")
    }

    /// Raft snapshot files.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("member").join("raft-snapshots")
    }

    /// The persisted identity, if this member started before.
    pub fn load_identity(&self) -> Result<Option<Identity>, String> {
        let path = self.identity_file();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{}: unreadable member identity: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Persists the identity (durably) unless it is already stored.
    pub fn save_identity(&self, id: &Identity) -> Result<(), String> {
        if self.load_identity()?.as_ref() == Some(id) {
            return Ok(());
        }
        let path = self.identity_file();
        write_durably(&path, &serde_json::to_vec_pretty(id).expect("serializable"))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The persisted [`Identity`].
    pub fn identity_file(&self) -> PathBuf {
        self.root.join("member").join("identity.json")
    }

    /// Refuses directories that belong to something else: an etcd data
    /// directory, or one with unrelated files.
    pub fn check(&self) -> Result<(), String> {
        let member = self.root.join("member");
        for etcd_part in ["wal", "snap/db"] {
            if member.join(etcd_part).exists() {
                return Err(format!(
                    "{}: this is an etcd data directory (member/{etcd_part} exists), not Ballast's; \
                     use a new --data-dir or restore an etcd snapshot into one",
                    self.root.display()
                ));
            }
        }
        Ok(())
    }

    /// Loads the identity, or derives it and writes it (durably) on first start.
    pub fn load_or_create_identity(
        &self,
        name: &str,
        peer_urls: &[String],
        token: &str,
    ) -> Result<Identity, String> {
        let path = self.identity_file();
        match fs::read(&path) {
            Ok(bytes) => {
                let id: Identity = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: unreadable member identity: {e}", path.display()))?;
                if id.name != name {
                    return Err(format!(
                        "{}: this data directory belongs to member {:?}, not {:?}",
                        self.root.display(),
                        id.name,
                        name
                    ));
                }
                Ok(id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let member_id = member_id(peer_urls, token);
                let id = Identity {
                    name: name.to_string(),
                    member_id,
                    cluster_id: cluster_id(&[member_id]),
                };
                write_durably(
                    &path,
                    &serde_json::to_vec_pretty(&id).expect("serializable"),
                )
                .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(id)
            }
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

/// etcd's member ID: the first 8 bytes (big-endian) of the SHA-1 of the
/// sorted peer URLs joined together, followed by the cluster token.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = sha1_smol::Sha1::new();
    h.update(urls.concat().as_bytes());
    h.update(token.as_bytes());
    first_u64(&h.digest().bytes())
}

/// etcd's cluster ID: the first 8 bytes of the SHA-1 of the sorted member
/// IDs, each as 8 big-endian bytes.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = sha1_smol::Sha1::new();
    for id in ids {
        h.update(&id.to_be_bytes());
    }
    first_u64(&h.digest().bytes())
}

fn first_u64(b: &[u8; 20]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("20 bytes"))
}

/// Writes a file so that after a crash it holds either nothing or all of
/// `data`: a temporary file, fsync, rename, fsync of the directory.
pub fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_etcd_defaults() {
        // etcd 3.x started with default flags reports member 8e9e05c52164694d
        // and cluster cdf818194e3a8c32.
        let m = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(format!("{m:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[m])), "cdf818194e3a8c32");
    }

    #[test]
    fn identity_is_persisted_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let dd = DataDir::new(dir.path());
        let a = dd
            .load_or_create_identity("n1", &["http://localhost:2380".into()], "t")
            .unwrap();
        let b = dd
            .load_or_create_identity("n1", &["http://other:2380".into()], "t")
            .unwrap();
        assert_eq!(a, b);
        assert!(dd.load_or_create_identity("n2", &[], "t").is_err());
        std::fs::create_dir_all(dir.path().join("member/wal")).unwrap();
        assert!(dd.check().unwrap_err().contains("etcd data directory"));
    }
}

//! `ballast snapshot restore`: a new data directory from a snapshot file
//! saved with `etcdctl snapshot save` (the Maintenance `Snapshot` stream).
//!
//! The file is the engine's whole-store image, zero-padded to a multiple
//! of 512 bytes, followed, as etcd appends it, by the SHA-256 of the
//! padded image. Restoring checks the checksum, installs
//! the image into a fresh engine, forgets the old member's log position
//! (the new member starts a new log, as etcd's restore starts a new
//! cluster) and writes the new member's identity.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ballast_mvcc::{Store, StoreOptions};
use sha2::{Digest, Sha256};

use crate::config::split_urls;
use crate::identity::{DataDir, Identity};

/// Length of the checksum etcd appends to a snapshot.
const SHA_LEN: u64 = 32;

/// What to restore, with `etcdutl snapshot restore`'s flags.
#[derive(clap::Args, Clone, Debug)]
pub struct RestoreOptions {
    /// The snapshot file (written by `etcdctl snapshot save`).
    pub file: PathBuf,
    /// The data directory to create (default: `<name>.etcd`); it must not
    /// exist or be empty.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Name of the member the data directory is for.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Initial cluster token of the new member (used for its ID).
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Peer URLs of the new member (used for its ID).
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// Restore a file that has no SHA-256 checksum at its end.
    #[arg(long)]
    pub skip_hash_check: bool,
}

impl RestoreOptions {
    /// The data directory, defaulting to `<name>.etcd` as etcd does.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)))
    }
}

/// What a restore produced.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The store revision of the snapshot.
    pub revision: i64,
    /// Its compaction point.
    pub compact_revision: i64,
    /// The new member.
    pub identity: Identity,
    /// The data directory written.
    pub data_dir: PathBuf,
}

fn sha256_of_prefix(file: &Path, len: u64) -> anyhow::Result<Vec<u8>> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(file)?).take(len);
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok(sha.finalize().to_vec())
}

/// Restores `opts.file` into a new data directory.
///
/// # Errors
/// The directory exists and is not empty, the checksum does not match, or
/// the file is not a Ballast snapshot; a directory this call created is
/// removed again.
pub fn restore(opts: &RestoreOptions) -> anyhow::Result<Restored> {
    let root = opts.data_dir();
    let existed = match std::fs::read_dir(&root) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "data-dir {} exists and is not empty; restore into a new directory",
                    root.display()
                );
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).context(format!("data-dir {}", root.display())),
    };
    let len = std::fs::metadata(&opts.file)
        .with_context(|| format!("snapshot file {}", opts.file.display()))?
        .len();
    let body = if opts.skip_hash_check {
        len
    } else {
        if len < SHA_LEN {
            bail!("{}: too short to be a snapshot", opts.file.display());
        }
        let body = len - SHA_LEN;
        let want = {
            let mut f = File::open(&opts.file)?;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(body))?;
            let mut tail = vec![0u8; SHA_LEN as usize];
            f.read_exact(&mut tail)?;
            tail
        };
        if sha256_of_prefix(&opts.file, body)? != want {
            bail!(
                "{}: the snapshot's SHA-256 checksum does not match: the file is damaged or was not \
                 saved whole (a file saved without the checksum needs --skip-hash-check)",
                opts.file.display()
            );
        }
        body
    };

    let done = restore_into(opts, &root, body);
    if done.is_err() {
        let cleanup = if existed {
            std::fs::remove_dir_all(root.join("member"))
        } else {
            std::fs::remove_dir_all(&root)
        };
        if let Err(e) = cleanup {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, "could not remove the partly restored data directory");
            }
        }
    }
    done
}

fn restore_into(opts: &RestoreOptions, root: &Path, body: u64) -> anyhow::Result<Restored> {
    let data_dir = DataDir::new(root);
    let kv = data_dir.kv();
    let store = Store::open(&kv, StoreOptions::default())
        .with_context(|| format!("cannot create the store in {}", kv.display()))?;
    let mut r = BufReader::with_capacity(1 << 20, File::open(&opts.file)?).take(body);
    store
        .install_snapshot(&mut r)
        .with_context(|| format!("{}: not a valid Ballast snapshot", opts.file.display()))?;
    if !opts.skip_hash_check {
        // Only the zero padding to a multiple of 512 bytes may follow.
        let mut rest = Vec::new();
        r.read_to_end(&mut rest)?;
        if rest.len() as u64 >= crate::maintenance::SNAPSHOT_ALIGN || rest.iter().any(|b| *b != 0) {
            bail!(
                "{}: {} unexpected bytes after the snapshot image",
                opts.file.display(),
                rest.len()
            );
        }
    }
    store.reset_log_position()?;
    let revision = store.current_revision();
    let compact_revision = store.compact_revision();
    drop(store);
    let identity = data_dir
        .load_or_create_identity(
            &opts.name,
            &split_urls(&opts.initial_advertise_peer_urls),
            &opts.initial_cluster_token,
        )
        .map_err(anyhow::Error::msg)?;
    Ok(Restored {
        revision,
        compact_revision,
        identity,
        data_dir: root.to_path_buf(),
    })
}

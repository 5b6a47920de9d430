//! Revisions and their on-disk key encoding.

use std::fmt;

/// A point in the store's history: `main` is the store revision a write
/// committed at (one per transaction), `sub` orders the changes inside it.
///
/// Revisions order by `main`, then `sub`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// The store revision: one per write transaction, starting at 1.
    pub main: i64,
    /// The change's position inside its transaction, starting at 0.
    pub sub: i64,
}

/// Length of an encoded revision key without the tombstone mark.
pub const REV_KEY_LEN: usize = 17;
/// Length of an encoded revision key that marks a deletion (tombstone).
pub const TOMBSTONE_KEY_LEN: usize = 18;
const SEPARATOR: u8 = b'_';
const TOMBSTONE_MARK: u8 = b't';

impl Revision {
    /// A revision from its parts.
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// The key under which this revision's change is stored: `main` (8 bytes,
    /// big-endian), `_`, `sub` (8 bytes, big-endian), then `t` if the change
    /// is a deletion. Byte order of keys equals revision order.
    pub fn to_key(self, tombstone: bool) -> Vec<u8> {
        let mut k = Vec::with_capacity(TOMBSTONE_KEY_LEN);
        k.extend_from_slice(&(self.main as u64).to_be_bytes());
        k.push(SEPARATOR);
        k.extend_from_slice(&(self.sub as u64).to_be_bytes());
        if tombstone {
            k.push(TOMBSTONE_MARK);
        }
        k
    }

    /// Decodes a key written by [`Revision::to_key`]; `None` if it is not
    /// one. The flag tells whether the key marks a tombstone.
    pub fn from_key(key: &[u8]) -> Option<(Revision, bool)> {
        let tombstone = match key.len() {
            REV_KEY_LEN => false,
            TOMBSTONE_KEY_LEN if key[17] == TOMBSTONE_MARK => true,
            _ => return None,
        };
        if key[8] != SEPARATOR {
            return None;
        }
        let main = u64::from_be_bytes(key[0..8].try_into().ok()?) as i64;
        let sub = u64::from_be_bytes(key[9..17].try_into().ok()?) as i64;
        Some((Revision { main, sub }, tombstone))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.main, self.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip_and_order() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(2, 0),
            Revision::new(256, 3),
            Revision::new(i64::MAX, 0),
        ];
        for w in revs.windows(2) {
            assert!(w[0].to_key(false) < w[1].to_key(false));
            // A tombstone key sorts right after its plain key, before the next revision.
            assert!(w[0].to_key(true) < w[1].to_key(false));
        }
        for r in revs {
            assert_eq!(Revision::from_key(&r.to_key(false)), Some((r, false)));
            assert_eq!(Revision::from_key(&r.to_key(true)), Some((r, true)));
        }
        assert_eq!(Revision::from_key(b"short"), None);
        let mut bad = Revision::new(1, 1).to_key(true);
        bad[17] = b'x';
        assert_eq!(Revision::from_key(&bad), None);
    }
}

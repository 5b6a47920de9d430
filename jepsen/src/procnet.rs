//! Which process opened a loopback TCP connection (Linux `/proc`).
//!
//! The proxy accepts a connection from `127.0.0.1:P`; the kernel lists the
//! other end (local `127.0.0.1:P`, remote the proxy's address) with its
//! socket inode in `/proc/net/tcp`, and the process owning that inode has
//! a `/proc/<pid>/fd/*` link to `socket:[inode]`. (A socket its process
//! already closed is still listed, with inode 0, until the kernel is done
//! with it.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Parses a `/proc/net/tcp{,6}` address (`0100007F:1F90`).
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_ne_bytes(),
        )),
        32 => {
            let mut b = [0u8; 16];
            for (k, chunk) in b.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(ip.get(k * 8..k * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            let v6 = Ipv6Addr::from(b);
            v6.to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The inode of the socket whose local address is `local` and remote
/// address `remote`, from the text of `/proc/net/tcp{,6}` (0 for a socket
/// its process has already closed).
pub fn find_inode(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (l, r, inode) = (f.get(1)?, f.get(2)?, f.get(9)?);
        (parse_addr(l)? == local && parse_addr(r)? == remote)
            .then(|| inode.parse().ok())
            .flatten()
    })
}

/// Whether process `pid` has a descriptor for socket `inode`.
pub fn owns_socket(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::read_link(e.path())
            .map(|t| t.as_os_str() == want.as_str())
            .unwrap_or(false)
    })
}

/// Who opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner<T> {
    /// This candidate holds the other end.
    Is(T),
    /// The other end is already closed by its process (nobody holds it).
    Gone,
    /// No candidate holds it, or it is not in the kernel's tables.
    Unknown,
}

/// Which of `candidates` (`(tag, pid)`) opened the connection that reached
/// us at `ours` from `theirs`.
pub fn connection_owner<T: Copy>(
    theirs: SocketAddr,
    ours: SocketAddr,
    candidates: &[(T, u32)],
) -> Owner<T> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|p| {
        let table = std::fs::read_to_string(p).ok()?;
        find_inode(&table, theirs, ours)
    });
    match inode {
        None => Owner::Unknown,
        Some(0) => Owner::Gone,
        Some(inode) => candidates
            .iter()
            .find(|(_, pid)| owns_socket(*pid, inode))
            .map_or(Owner::Unknown, |(t, _)| Owner::Is(*t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_format() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:2710 0100007F:2711 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 20 4 30 10 -1\n";
        let a: SocketAddr = "127.0.0.1:10000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:10001".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(find_inode(table, a, b), Some(4242));
            assert_eq!(find_inode(table, b, a), None);
        }
        assert_eq!(parse_addr("zz"), None);
        let mapped = "0000000000000000FFFF00000100007F:2710";
        if cfg!(target_endian = "little") {
            assert_eq!(parse_addr(mapped), Some(a));
        }
    }

    #[test]
    fn finds_our_own_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, theirs) = l.accept().unwrap();
        assert_eq!(theirs, c.local_addr().unwrap());
        let me = std::process::id();
        let found = connection_owner(theirs, l.local_addr().unwrap(), &[(1, 1), (7, me)]);
        assert_eq!(found, Owner::Is(7));
        let nobody: &[(u8, u32)] = &[];
        assert_eq!(
            connection_owner(theirs, l.local_addr().unwrap(), nobody),
            Owner::Unknown
        );
    }
}

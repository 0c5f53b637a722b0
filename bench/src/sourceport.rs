//! Source ports for connections to a loopback server, chosen by the tool.
//!
//! Left to the kernel, `connect()` looks for a free ephemeral port among
//! those of one parity first (half the range, about 14,000 of the default
//! 32768-60999) and only then the other half: past about 14,000 connections
//! to one address, every further `connect()` walks all of the first half
//! before it finds a port, about half a millisecond of the tool's CPU each on
//! this machine (twenty times the cost below 14,000). Reconnecting 19,000
//! clients, the tool spent seconds in that search, measuring itself instead
//! of the server. Binding each socket to the next port of the range first
//! (`bind()` checks one port) keeps every connect equally cheap. Only for
//! loopback IPv4 servers, where the tool knows its source address; a port
//! in use (by this process or any other) is skipped.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{FromRawFd, OwnedFd};

use mio::net::TcpStream;

/// Ports tried before the kernel is left to choose.
const TRIES: usize = 1024;

pub struct SourcePorts {
    low: u16,
    count: u32,
    /// Offset of the next port to try, from `low`.
    next: u32,
}

impl SourcePorts {
    /// The kernel's ephemeral range (ip_local_port_range), starting at a
    /// point picked by `seed`.
    pub fn new(seed: u64) -> SourcePorts {
        let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| {
                let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
                Some((parts.next()??, parts.next()??))
            })
            .filter(|(low, high)| low < high && *low >= 1024)
            .unwrap_or((32768, 60999));
        let count = u32::from(high - low) + 1;
        SourcePorts {
            low,
            count,
            next: (seed % u64::from(count)) as u32,
        }
    }

    /// A nonblocking connect to `addr`: from the next free port of the range
    /// when `addr` is a loopback IPv4 address, else from wherever the kernel
    /// picks.
    pub fn connect(&mut self, addr: SocketAddr) -> io::Result<TcpStream> {
        let SocketAddr::V4(remote) = addr else {
            return TcpStream::connect(addr);
        };
        if !remote.ip().is_loopback() {
            return TcpStream::connect(addr);
        }
        for _ in 0..TRIES {
            let port = self.low + self.next as u16;
            self.next = (self.next + 1) % self.count;
            match connect_from(SocketAddrV4::new(*remote.ip(), port), remote) {
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL)
                    ) => {}
                other => return other,
            }
        }
        TcpStream::connect(addr)
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// socket(), bind() to `local`, connect() to `remote`, nonblocking.
fn connect_from(local: SocketAddrV4, remote: SocketAddrV4) -> io::Result<TcpStream> {
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket(2) takes no pointers; the descriptor is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket just opened here that nothing else owns; from
    // now on `owned` closes it on every path.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let from = sockaddr(local);
    // SAFETY: `from` is a valid sockaddr_in of `len` bytes, alive for the call.
    let bound = unsafe { libc::bind(fd, (&raw const from).cast(), len) };
    if bound < 0 {
        return Err(io::Error::last_os_error());
    }
    let to = sockaddr(remote);
    // SAFETY: as above, for `to`.
    let connected = unsafe { libc::connect(fd, (&raw const to).cast(), len) };
    if connected < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(owned)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

    #[test]
    fn connects_from_consecutive_free_ports() {
        let listener = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut ports = SourcePorts::new(12345);
        let first = ports.connect(addr).unwrap();
        let second = ports.connect(addr).unwrap();
        let (a, b) = (
            first.local_addr().unwrap().port(),
            second.local_addr().unwrap().port(),
        );
        assert!(a >= ports.low && b >= ports.low);
        assert_ne!(a, b);
        let (mut accepted, _) = listener.accept().unwrap();
        let _ = std::io::Write::write(&mut accepted, b"x");
        // A port this process holds is skipped.
        let held = std::net::TcpListener::bind((LOCALHOST, ports.low + ports.next as u16));
        let third = ports.connect(addr).unwrap();
        if let Ok(held) = held {
            assert_ne!(
                third.local_addr().unwrap().port(),
                held.local_addr().unwrap().port()
            );
        }
    }
}

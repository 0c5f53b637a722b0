//! Who a client is, for limits: its address, with IPv6 taken per /64 (one
//! host, or one customer's block, can use any address in it), and how many
//! connections each address holds.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

/// The address limits are kept per: IPv4 as is (IPv4-mapped IPv6 too), IPv6
/// by its /64 prefix.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

/// Open connections per address, with a cap (0: none).
pub struct AddressCounts {
    counts: HashMap<IpAddr, u32>,
    cap: usize,
}

impl AddressCounts {
    pub fn new(cap: usize) -> AddressCounts {
        AddressCounts {
            counts: HashMap::new(),
            cap,
        }
    }

    /// Counts a new connection from `ip`, unless its address is at the cap.
    pub fn admit(&mut self, ip: IpAddr) -> bool {
        let count = self.counts.entry(address_key(ip)).or_insert(0);
        if self.cap > 0 && *count as usize >= self.cap {
            return false;
        }
        *count += 1;
        true
    }

    /// A connection from `ip` closed.
    pub fn release(&mut self, ip: IpAddr) {
        let key = address_key(ip);
        if let Some(count) = self.counts.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.counts.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_is_keyed_by_its_slash_64() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            address_key(ip("2001:db8:1:2:ffff:1:2:3")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(address_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(address_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(address_key(ip("10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn the_cap_holds_per_address_and_frees_on_close() {
        let mut counts = AddressCounts::new(2);
        assert!(counts.admit(ip("2001:db8::1")));
        assert!(counts.admit(ip("2001:db8::2")), "same /64");
        assert!(!counts.admit(ip("2001:db8::3")), "the /64 is at its cap");
        assert!(
            counts.admit(ip("10.0.0.1")),
            "other addresses are not affected"
        );
        counts.release(ip("2001:db8::1"));
        assert!(counts.admit(ip("2001:db8::4")));
        assert!(AddressCounts::new(0).admit(ip("10.0.0.1")), "0: no cap");
    }
}

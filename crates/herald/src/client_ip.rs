//! The client's address: the TCP peer, or what `X-Forwarded-For` says when the peer is a
//! configured trusted proxy. Used for the per-IP connection limit and in logs.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use axum::http::HeaderMap;
use serde::{Deserialize, Deserializer};

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`); a bare address is a /32 or /128.
/// ipnet does the arithmetic; this adds bare addresses and IPv4-mapped IPv6 peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet(ipnet::IpNet);

/// Why a string is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP network like 10.0.0.0/8 or ::1/128")]
pub struct BadIpNet(String);

impl FromStr for IpNet {
    type Err = BadIpNet;

    fn from_str(text: &str) -> Result<Self, BadIpNet> {
        let trimmed = text.trim();
        let net = if trimmed.contains('/') {
            trimmed.parse::<ipnet::IpNet>().ok()
        } else {
            trimmed
                .parse::<IpAddr>()
                .ok()
                .map(|ip| ipnet::IpNet::from(canonical(ip)))
        };
        net.map(Self).ok_or_else(|| BadIpNet(text.to_string()))
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl serde::Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl IpNet {
    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&canonical(ip))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, what a dual-stack socket reports) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The client's address. Without trusted proxies, or when the peer is not one, it is the
/// peer: anyone can write `X-Forwarded-For`. When the peer is trusted, the header is read
/// from the right (each proxy appends the address it saw) and the first address that is
/// not itself a trusted proxy is the client. An unreadable entry stops the walk at the last
/// trusted hop, which then stands for the client: conservative for the per-IP limit.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for part in text.rsplit(',') {
            let Some(ip) = parse_hop(part.trim()) else {
                return client;
            };
            client = ip;
            if !is_trusted(ip) {
                return ip;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[::1]:80`).
fn parse_hop(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    text.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| canonical(s.ip()))
}

/// The key the per-IP limit counts under: the IPv4 address, or the IPv6 /64 (one
/// subscriber usually holds a whole /64, so counting single IPv6 addresses would let one
/// client open unbounded connections).
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn networks() {
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let one: IpNet = "127.0.0.1".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "x/8",
            "10.0.0.0/",
            "1.2.3.4/-1",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_only_from_trusted_peers() {
        let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let h = xff(&["198.51.100.7"]);
        assert_eq!(resolve(stranger, &h, &trusted), stranger);
        assert_eq!(resolve(peer, &h, &[]), peer);
        assert_eq!(resolve(peer, &h, &trusted).to_string(), "198.51.100.7");
        // A spoofed left part is skipped: the rightmost untrusted hop is the client.
        let h = xff(&["1.1.1.1, 198.51.100.7, 10.0.0.5"]);
        assert_eq!(resolve(peer, &h, &trusted).to_string(), "198.51.100.7");
        let h = xff(&["1.1.1.1", "198.51.100.7:4000"]);
        assert_eq!(resolve(peer, &h, &trusted).to_string(), "198.51.100.7");
        let h = xff(&["garbage, 10.0.0.5"]);
        assert_eq!(resolve(peer, &h, &trusted).to_string(), "10.0.0.5");
        assert_eq!(resolve(peer, &HeaderMap::new(), &trusted), peer);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a = limit_key("2001:db8:1:2::1".parse().unwrap());
        let b = limit_key("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = limit_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            limit_key("::ffff:1.2.3.4".parse().unwrap()).to_string(),
            "1.2.3.4"
        );
    }
}

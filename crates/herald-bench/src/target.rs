//! Parsing target URLs and templates, and refusing anything that is not loopback.
//!
//! A load generator pointed at the wrong host is a denial of service; herald-bench only
//! talks to `127.0.0.0/8` (or `localhost`, which it resolves to `127.0.0.1` itself).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// A target URL could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The scheme is not one this tool speaks.
    #[error("{0}: the scheme must be ws:// or http://")]
    Scheme(String),
    /// The host is not an IPv4 loopback address.
    #[error("{0}: only loopback targets (127.0.0.0/8 or localhost) are allowed")]
    NotLoopback(String),
    /// The host or port does not parse.
    #[error("{0}: cannot parse host and port")]
    Malformed(String),
}

/// A template such as `ws://127.0.0.1:8000/message/{i}/stream/`, split into the fixed
/// address and a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header value (`host:port` as written in the URL).
    pub host: String,
    /// The path and query, still holding its `{i}`/`{g}` placeholders.
    pub path: String,
}

impl Target {
    /// Parses `url`; `schemes` lists the accepted schemes with their default ports.
    pub fn parse(url: &str, schemes: &[(&str, u16)]) -> Result<Self, TargetError> {
        let (rest, default_port) = schemes
            .iter()
            .find_map(|(scheme, port)| url.strip_prefix(scheme).map(|rest| (rest, *port)))
            .ok_or_else(|| TargetError::Scheme(url.to_string()))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, "/"),
        };
        if authority.contains('{') {
            return Err(TargetError::Malformed(url.to_string()));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| TargetError::Malformed(url.to_string()))?,
            ),
            None => (authority, default_port),
        };
        let ip = if host.eq_ignore_ascii_case("localhost") {
            Ipv4Addr::LOCALHOST
        } else {
            host.parse::<Ipv4Addr>()
                .map_err(|_| TargetError::NotLoopback(url.to_string()))?
        };
        if !ip.is_loopback() {
            return Err(TargetError::NotLoopback(url.to_string()));
        }
        Ok(Self {
            addr: SocketAddr::V4(SocketAddrV4::new(ip, port)),
            host: authority.to_string(),
            path: path.to_string(),
        })
    }
}

/// Fills `{i}` (client index), `{g}` (group index) and `{payload}` into `template`.
pub fn fill(template: &str, i: u64, g: u64, payload: &str) -> String {
    let mut out = String::with_capacity(template.len() + payload.len() + 16);
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{i}") {
            out.push_str(&i.to_string());
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{g}") {
            out.push_str(&g.to_string());
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{payload}") {
            out.push_str(payload);
            rest = after;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The source addresses `127.0.0.2 ..` used to spread client sockets, `count` of them.
pub fn source_addresses(count: usize) -> Vec<Ipv4Addr> {
    (0..count.clamp(1, 250))
        .map(|k| Ipv4Addr::new(127, 0, 0, 2 + k as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS: &[(&str, u16)] = &[("ws://", 80)];

    #[test]
    fn parses_loopback_targets() {
        let t = Target::parse("ws://127.0.0.1:8000/message/{i}/stream/", WS).unwrap();
        assert_eq!(t.addr, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:8000");
        assert_eq!(t.path, "/message/{i}/stream/");
        let t = Target::parse("ws://localhost", WS).unwrap();
        assert_eq!(t.addr, "127.0.0.1:80".parse().unwrap());
        assert_eq!(t.path, "/");
    }

    #[test]
    fn refuses_other_hosts() {
        for url in [
            "ws://10.0.0.1:80/",
            "ws://example.com/",
            "ws://[::1]:80/",
            "ws://8.8.8.8/",
        ] {
            assert!(
                matches!(
                    Target::parse(url, WS),
                    Err(TargetError::NotLoopback(_) | TargetError::Malformed(_))
                ),
                "{url}"
            );
        }
        assert!(matches!(
            Target::parse("http://127.0.0.1/", WS),
            Err(TargetError::Scheme(_))
        ));
    }

    #[test]
    fn fills_placeholders() {
        assert_eq!(
            fill(
                "{\"group\":\"user.{g}\",\"text\":\"{payload}\"} {i} {x}",
                7,
                3,
                "p"
            ),
            "{\"group\":\"user.3\",\"text\":\"p\"} 7 {x}"
        );
    }

    #[test]
    fn sources_start_at_127_0_0_2() {
        let s = source_addresses(3);
        assert_eq!(
            s,
            vec![
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3),
                Ipv4Addr::new(127, 0, 0, 4)
            ]
        );
    }
}

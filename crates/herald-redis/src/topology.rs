//! `Topology`: which kind of Redis deployment a layer URL names.
//!
//! - `redis://…` (and whatever the `redis` crate accepts): one Redis ([`Topology::Single`]).
//! - `redis+cluster://[user:password@]host:port,host:port[/]`: a Redis Cluster reached
//!   through any of the listed seed nodes ([`Topology::Cluster`]). At least one seed; every
//!   seed needs a port; IPv6 hosts go in brackets (`[::1]:7000`). A cluster has no
//!   databases, so no `/db` part other than an empty one is accepted.

use crate::RedisLayerError;

/// Scheme of a Redis Cluster URL.
const CLUSTER_SCHEME: &str = "redis+cluster://";
/// Most seed nodes accepted in one URL: a bound on what a config can make us try.
const MAX_SEEDS: usize = 64;

/// The deployment a layer URL names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Topology {
    /// One Redis server: the URL is handed to the `redis` crate as it is.
    Single,
    /// A Redis Cluster, found through its seed nodes.
    Cluster(ClusterUrl),
}

/// A parsed `redis+cluster://` URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ClusterUrl {
    /// Seed nodes, `(host, port)`, in the URL's order.
    pub(crate) seeds: Vec<(String, u16)>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

impl std::fmt::Debug for ClusterUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password: configs end up in logs.
        f.debug_struct("ClusterUrl")
            .field("seeds", &self.seeds)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Reads which deployment `url` names; only `redis+cluster://` URLs are checked here (the
/// `redis` crate checks the others).
pub(crate) fn parse(url: &str) -> Result<Topology, RedisLayerError> {
    let Some(rest) = strip_scheme(url, CLUSTER_SCHEME) else {
        return Ok(Topology::Single);
    };
    parse_cluster(rest).map(Topology::Cluster).map_err(|why| {
        RedisLayerError::InvalidClusterUrl(format!(
            "{why} (expected redis+cluster://[user:password@]host:port,host:port)"
        ))
    })
}

fn strip_scheme<'a>(url: &'a str, scheme: &str) -> Option<&'a str> {
    let head = url.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme)
        .then(|| url.get(scheme.len()..))
        .flatten()
}

fn parse_cluster(rest: &str) -> Result<ClusterUrl, String> {
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !(path.is_empty() || path == "/") {
        return Err(format!(
            "a cluster has no databases; remove {path:?} from the URL"
        ));
    }
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => {
            let (user, pass) = match info.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                None => (info, None),
            };
            let user = decode(user)?;
            let pass = pass.map(decode).transpose()?;
            ((!user.is_empty()).then_some(user), pass)
        }
    };
    let mut seeds = Vec::new();
    for part in hosts.split(',') {
        if seeds.len() == MAX_SEEDS {
            return Err(format!("more than {MAX_SEEDS} seed nodes"));
        }
        seeds.push(parse_host_port(part)?);
    }
    Ok(ClusterUrl {
        seeds,
        username,
        password,
    })
}

fn parse_host_port(part: &str) -> Result<(String, u16), String> {
    if part.is_empty() {
        return Err("empty seed node".to_owned());
    }
    let (host, port) = if let Some(bracketed) = part.strip_prefix('[') {
        let (host, rest) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in {part:?}"))?;
        let port = rest
            .strip_prefix(':')
            .ok_or_else(|| format!("seed {part:?} has no port"))?;
        (host, port)
    } else {
        part.rsplit_once(':')
            .ok_or_else(|| format!("seed {part:?} has no port"))?
    };
    if host.is_empty()
        || host
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b"/?#@[]".contains(&b))
    {
        return Err(format!("bad host in seed {part:?}"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("bad port in seed {part:?}"))?;
    Ok((host.to_owned(), port))
}

/// Percent-decoding of the user and password parts.
fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "bad percent-escape in the user or password".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "user or password is not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(url: &str) -> ClusterUrl {
        match parse(url) {
            Ok(Topology::Cluster(c)) => c,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn plain_urls_are_single() {
        assert_eq!(parse("redis://127.0.0.1:6379/0").unwrap(), Topology::Single);
        assert_eq!(parse("rediss://h:1").unwrap(), Topology::Single);
    }

    #[test]
    fn cluster_urls_parse() {
        let c = cluster("redis+cluster://h1:7000,10.0.0.2:7001");
        assert_eq!(
            c.seeds,
            vec![("h1".to_owned(), 7000), ("10.0.0.2".to_owned(), 7001)]
        );
        assert_eq!((c.username, c.password), (None, None));
        let c = cluster("REDIS+CLUSTER://app:p%40ss@[::1]:7000/");
        assert_eq!(c.seeds, vec![("::1".to_owned(), 7000)]);
        assert_eq!(c.username.as_deref(), Some("app"));
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        let c = cluster("redis+cluster://:secret@h:1");
        assert_eq!((c.username, c.password.as_deref()), (None, Some("secret")));
        assert!(!format!("{:?}", cluster("redis+cluster://:secret@h:1")).contains("secret"));
    }

    #[test]
    fn bad_cluster_urls_are_refused_with_a_reason() {
        for url in [
            "redis+cluster://",
            "redis+cluster://h1",
            "redis+cluster://h1:7000,",
            "redis+cluster://h1:0",
            "redis+cluster://h1:70000",
            "redis+cluster://h1:7000/0",
            "redis+cluster://[::1:7000",
            "redis+cluster://u:%zz@h:1",
            "redis+cluster://h 1:7000",
        ] {
            let e = parse(url).expect_err(url).to_string();
            assert!(e.contains("redis+cluster"), "{url}: {e}");
        }
    }
}

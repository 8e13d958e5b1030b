//! `Topology`: which Redis deployment a layer URL names, parsed once at start-up.
//!
//! - `redis://[user:password@]host[:port][/db]`: one Redis ([`Topology::Single`]).
//! - `redis+sentinel://[user:password@]h1[:26379],h2[:26379]/<master-name>[/<db>]`: the
//!   master that Redis Sentinel names ([`Topology::Sentinel`]); the credentials and the
//!   database apply to the master, the sentinels are asked without credentials.
//! - `redis+cluster://[user:password@]host:port,host:port[/]`: a Redis Cluster reached
//!   through any of the listed seed nodes ([`Topology::Cluster`]). At least one seed; every
//!   seed needs a port; IPv6 hosts go in brackets (`[::1]:7000`). A cluster has no
//!   databases, so no `/db` part other than an empty one is accepted.

use crate::RedisLayerError;

/// Sentinel's well-known port, used when a sentinel address names none.
const SENTINEL_PORT: u16 = 26379;
/// Most sentinels one URL may name: a bound on what is asked in turn.
const MAX_SENTINELS: usize = 16;
/// Scheme of a Redis Cluster URL.
const CLUSTER_SCHEME: &str = "redis+cluster://";
/// Most seed nodes accepted in one URL: a bound on what a config can make us try.
const MAX_SEEDS: usize = 64;

/// The Redis deployment a layer talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One Redis at a fixed address: the URL as given (`redis://…`).
    Single(String),
    /// A master found through Redis Sentinel, and found again after a failover.
    Sentinel(SentinelTopology),
    /// A Redis Cluster, found through its seed nodes.
    Cluster(ClusterUrl),
}

/// The parts of a `redis+sentinel://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelTopology {
    /// The sentinels, asked in this order: `(host, port)`.
    pub sentinels: Vec<(String, u16)>,
    /// The name the sentinels monitor the master under.
    pub master: String,
    /// The database number on the master.
    pub db: u32,
    /// `user:password` as written in the URL (still percent-encoded), for the master.
    userinfo: Option<String>,
}

impl std::fmt::Debug for SentinelTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelTopology")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("db", &self.db)
            .field("userinfo", &self.userinfo.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A parsed `redis+cluster://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterUrl {
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

impl SentinelTopology {
    /// The `redis://` URL of the master at `host:port`, with this URL's credentials and db.
    pub(crate) fn master_url(&self, host: &str, port: u16) -> String {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        match &self.userinfo {
            Some(userinfo) => format!("redis://{userinfo}@{host}:{port}/{}", self.db),
            None => format!("redis://{host}:{port}/{}", self.db),
        }
    }
}

impl Topology {
    /// Parses a layer URL; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<Self, RedisLayerError> {
        let fail = |why: &'static str| Err(RedisLayerError::InvalidConfig(why));
        if let Some(rest) = strip_scheme(url, CLUSTER_SCHEME) {
            return parse_cluster(rest).map(Self::Cluster).map_err(|why| {
                RedisLayerError::InvalidClusterUrl(format!(
                    "{why} (expected redis+cluster://[user:password@]host:port,host:port)"
                ))
            });
        }
        if url.starts_with("redis://") {
            return Ok(Self::Single(url.to_owned()));
        }
        if url.starts_with("rediss://") || url.starts_with("redis+unix://") {
            // `RedisLayer::new` names the unsupported transport more precisely.
            return Ok(Self::Single(url.to_owned()));
        }
        let Some(rest) = url.strip_prefix("redis+sentinel://") else {
            return Err(RedisLayerError::InvalidUrl(Box::from(
                "the url must start with redis://, redis+sentinel:// or redis+cluster://",
            )));
        };
        if rest.contains(['?', '#']) {
            return fail("redis+sentinel url: query strings and fragments are not supported");
        }
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((userinfo, rest)) if !userinfo.is_empty() => (Some(userinfo.to_owned()), rest),
            Some(_) => return fail("redis+sentinel url: empty credentials before '@'"),
            None => (None, rest),
        };
        let mut parts = rest.split('/');
        let hosts = parts.next().unwrap_or_default();
        let master = parts.next().unwrap_or_default();
        let db = match parts.next() {
            None | Some("") => 0,
            Some(db) if db.bytes().all(|b| b.is_ascii_digit()) => match db.parse::<u32>() {
                Ok(db) => db,
                Err(_) => return fail("redis+sentinel url: the database number is too large"),
            },
            Some(_) => return fail("redis+sentinel url: the database must be a number"),
        };
        if parts.next().is_some() {
            return fail("redis+sentinel url: expected /<master-name>[/<db>] after the hosts");
        }
        if master.is_empty() {
            return fail("redis+sentinel url: the master name is missing (…/<master-name>)");
        }
        if !master
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return fail("redis+sentinel url: the master name may only use [A-Za-z0-9._-]");
        }
        let mut sentinels = Vec::new();
        for host in hosts.split(',') {
            if sentinels.len() == MAX_SENTINELS {
                return fail("redis+sentinel url: at most 16 sentinels");
            }
            sentinels.push(parse_host(host)?);
        }
        Ok(Self::Sentinel(SentinelTopology {
            sentinels,
            master: master.to_owned(),
            db,
            userinfo,
        }))
    }
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

/// `host[:port]` or `[v6]:port`.
fn parse_host(text: &str) -> Result<(String, u16), RedisLayerError> {
    let fail = |why: &'static str| Err(RedisLayerError::InvalidConfig(why));
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return fail("redis+sentinel url: unclosed '[' in a sentinel address");
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return fail("redis+sentinel url: garbage after ']' in a sentinel address"),
            },
        }
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return fail("redis+sentinel url: a sentinel address has no host");
    }
    if host
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return fail("redis+sentinel url: a sentinel host contains whitespace");
    }
    let port = match port {
        None => SENTINEL_PORT,
        Some(port) => match port.parse::<u16>() {
            Ok(0) | Err(_) => return fail("redis+sentinel url: a sentinel port is not 1-65535"),
            Ok(port) => port,
        },
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinel(url: &str) -> SentinelTopology {
        match Topology::parse(url) {
            Ok(Topology::Sentinel(s)) => s,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn plain_urls_are_single() {
        assert_eq!(
            Topology::parse("redis://127.0.0.1:6379/0").unwrap(),
            Topology::Single("redis://127.0.0.1:6379/0".to_owned())
        );
    }

    #[test]
    fn sentinel_urls_parse_hosts_master_db_and_credentials() {
        let s = sentinel("redis+sentinel://h1:26380,h2,[::1]:5000/mymaster/3");
        assert_eq!(
            s.sentinels,
            vec![
                ("h1".to_owned(), 26380),
                ("h2".to_owned(), 26379),
                ("::1".to_owned(), 5000)
            ]
        );
        assert_eq!(s.master, "mymaster");
        assert_eq!(s.db, 3);
        assert_eq!(s.master_url("10.0.0.1", 6380), "redis://10.0.0.1:6380/3");
        assert_eq!(s.master_url("::1", 6380), "redis://[::1]:6380/3");

        let s = sentinel("redis+sentinel://u:p%40ss@h1:1/m");
        assert_eq!(s.db, 0);
        assert_eq!(s.master_url("h", 2), "redis://u:p%40ss@h:2/0");
        assert!(
            !format!("{s:?}").contains("p%40ss"),
            "credentials are redacted"
        );
        assert_eq!(sentinel("redis+sentinel://h/m/").db, 0);
    }

    #[test]
    fn invalid_urls_are_refused_with_a_reason() {
        let many = format!("redis+sentinel://{}/m", vec!["h"; 17].join(","));
        for bad in ["", "http://h/m"] {
            assert!(
                matches!(Topology::parse(bad), Err(RedisLayerError::InvalidUrl(_))),
                "{bad:?}"
            );
        }
        for bad in [
            "redis+sentinel://",
            "redis+sentinel://h1:26379",
            "redis+sentinel://h1:26379/",
            "redis+sentinel://h1:26379/m/x",
            "redis+sentinel://h1:26379/m/1/2",
            "redis+sentinel://h1:26379/m/99999999999",
            "redis+sentinel://h1:0/m",
            "redis+sentinel://h1:70000/m",
            "redis+sentinel://h1:port/m",
            "redis+sentinel://,h1/m",
            "redis+sentinel://h1,/m",
            "redis+sentinel://[::1/m",
            "redis+sentinel://[::1]x/m",
            "redis+sentinel://@h1/m",
            "redis+sentinel://h1/m?x=1",
            "redis+sentinel://h1/m a",
            "redis+sentinel://h1/m{x}",
            many.as_str(),
        ] {
            match Topology::parse(bad) {
                Err(RedisLayerError::InvalidConfig(why)) => assert!(!why.is_empty()),
                other => panic!("{bad:?} was accepted: {other:?}"),
            }
        }
    }

    fn cluster(url: &str) -> ClusterUrl {
        match Topology::parse(url) {
            Ok(Topology::Cluster(c)) => c,
            other => panic!("{url}: {other:?}"),
        }
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
            let e = Topology::parse(url).expect_err(url).to_string();
            assert!(e.contains("redis+cluster"), "{url}: {e}");
        }
    }
}

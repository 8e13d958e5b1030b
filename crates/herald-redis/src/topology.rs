//! `Topology`: which Redis deployment a layer URL names, parsed once at start-up.
//!
//! - `redis://[user:password@]host[:port][/db]`: one Redis ([`Topology::Single`]).
//! - `redis+sentinel://[user:password@]h1[:26379],h2[:26379]/<master-name>[/<db>]`: the
//!   master that Redis Sentinel names ([`Topology::Sentinel`]); the credentials and the
//!   database apply to the master, the sentinels are asked without credentials.

use crate::RedisLayerError;

/// Sentinel's well-known port, used when a sentinel address names none.
const SENTINEL_PORT: u16 = 26379;
/// Most sentinels one URL may name: a bound on what is asked in turn.
const MAX_SENTINELS: usize = 16;

/// The Redis deployment a layer talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One Redis at a fixed address: the URL as given (`redis://…`).
    Single(String),
    /// A master found through Redis Sentinel, and found again after a failover.
    Sentinel(SentinelTopology),
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
        if url.starts_with("redis://") {
            return Ok(Self::Single(url.to_owned()));
        }
        if url.starts_with("rediss://") || url.starts_with("redis+unix://") {
            // `RedisLayer::new` names the unsupported transport more precisely.
            return Ok(Self::Single(url.to_owned()));
        }
        let Some(rest) = url.strip_prefix("redis+sentinel://") else {
            return Err(RedisLayerError::InvalidUrl(Box::from(
                "the url must start with redis:// or redis+sentinel://",
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
}

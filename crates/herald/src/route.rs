//! `Route`: a compiled `[[routes]]` entry that matches request paths and names the groups
//! a connection joins.
//!
//! Matching works on the raw path, without percent-decoding: a `{name}` segment accepts
//! only `[A-Za-z0-9._-]+` other than `.` and `..`, so `%2F`, dot-segment tricks or empty
//! segments never match it.

use herald_core::group::is_name_byte;
use herald_core::{GroupName, InvalidGroupName};

use crate::config::{AuthMode, RouteConfig};

/// Why a route entry cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The path does not start with `/`.
    #[error("path must start with '/'")]
    NotAbsolute,
    /// A path segment mixes `{name}` with other text, or the name is malformed.
    #[error("segment {0:?}: a parameter must be a whole segment like {{user_id}}")]
    BadSegment(String),
    /// A literal path segment has characters outside `[A-Za-z0-9._~!$&'()*+,;=:@%-]`.
    #[error("segment {0:?} has characters not allowed in a path")]
    BadLiteral(String),
    /// The same parameter name appears twice.
    #[error("parameter {{{0}}} appears twice")]
    DuplicateParam(String),
    /// A group template uses a parameter the path does not define.
    #[error("group {0:?} uses a parameter the path does not define")]
    UnknownParam(String),
    /// A group template is malformed or its literal text is not allowed in group names.
    #[error("group {0:?} is not a valid group template")]
    BadGroup(String),
    /// No groups.
    #[error("a route must name at least one group")]
    NoGroups,
    /// `sub_param` names a parameter the path does not define.
    #[error("sub_param {0:?} is not a parameter of the path")]
    UnknownSubParam(String),
    /// A `hook_groups` entry is not a group name, `prefix.*` or `*`.
    #[error("hook group pattern {0:?} must be a group name, prefix.* or *")]
    BadHookGroup(String),
    /// An `origins` entry is not `scheme://host[:port]`.
    #[error("origin {0:?} must look like https://host[:port], with no path")]
    BadOrigin(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// Index into the route's parameters.
    Param(usize),
}

/// A compiled route.
#[derive(Clone, Debug)]
pub struct Route {
    pattern: String,
    segments: Vec<Segment>,
    params: Vec<String>,
    groups: Vec<Vec<Piece>>,
    /// How connections on this route authenticate.
    pub auth: AuthMode,
    /// Index of the parameter a token's `sub` stands for (default grant); `None` when the
    /// path has no parameter.
    sub_param: Option<usize>,
    /// Allowed `Origin` values, lowercased; empty = any.
    origins: Vec<String>,
    /// Patterns of the extra groups a connect hook may grant (`auth = "hook"`).
    hook_groups: Vec<String>,
    /// `herald.v1` connections get `join`/`leave` events.
    pub presence: bool,
}

/// A request path matched against a route.
#[derive(Debug)]
pub struct RouteMatch<'r> {
    /// The matched route.
    pub route: &'r Route,
    /// Parameter values, in the order the path defines them.
    pub values: Vec<String>,
}

impl Route {
    /// Compiles and checks a route entry.
    pub fn compile(config: &RouteConfig) -> Result<Self, RouteError> {
        let path = config.path.as_str();
        let rest = path.strip_prefix('/').ok_or(RouteError::NotAbsolute)?;
        let mut segments = Vec::new();
        let mut params: Vec<String> = Vec::new();
        for seg in rest.split('/') {
            if let Some(inner) = seg.strip_prefix('{') {
                let name = inner
                    .strip_suffix('}')
                    .filter(|n| {
                        !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    })
                    .ok_or_else(|| RouteError::BadSegment(seg.to_string()))?;
                if params.iter().any(|p| p == name) {
                    return Err(RouteError::DuplicateParam(name.to_string()));
                }
                params.push(name.to_string());
                segments.push(Segment::Param);
            } else if seg.contains(['{', '}']) {
                return Err(RouteError::BadSegment(seg.to_string()));
            } else if !seg.bytes().all(is_path_byte) {
                return Err(RouteError::BadLiteral(seg.to_string()));
            } else {
                segments.push(Segment::Literal(seg.to_string()));
            }
        }
        if config.groups.is_empty() {
            return Err(RouteError::NoGroups);
        }
        let groups = config
            .groups
            .iter()
            .map(|g| compile_group(g, &params))
            .collect::<Result<Vec<_>, _>>()?;
        let sub_param = match &config.sub_param {
            Some(name) => Some(
                params
                    .iter()
                    .position(|p| p == name)
                    .ok_or_else(|| RouteError::UnknownSubParam(name.clone()))?,
            ),
            // The first parameter: `{user_id}` in the seed's route.
            None => (!params.is_empty()).then_some(0),
        };
        let origins = config
            .origins
            .iter()
            .map(|o| normalize_origin(o).ok_or_else(|| RouteError::BadOrigin(o.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(bad) = config
            .hook_groups
            .iter()
            .find(|p| !crate::auth::is_valid_pattern(p))
        {
            return Err(RouteError::BadHookGroup(bad.clone()));
        }
        Ok(Self {
            hook_groups: config.hook_groups.clone(),
            presence: config.presence,
            pattern: path.to_string(),
            segments,
            params,
            groups,
            auth: config.auth,
            sub_param,
            origins,
        })
    }

    /// Index of the path parameter bound to a token's `sub`.
    pub fn sub_param(&self) -> Option<usize> {
        self.sub_param
    }

    /// How many groups a connection on this route joins.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Whether a request with this `Origin` header may connect. Without an allow-list
    /// anyone may; with one, a browser's origin must be listed. A request without
    /// `Origin` is not from a browser page (browsers always send it on WebSocket
    /// upgrades), and such a client could claim any origin anyway, so it passes.
    pub fn allows_origin(&self, origin: Option<&[u8]>) -> bool {
        if self.origins.is_empty() {
            return true;
        }
        let Some(origin) = origin else {
            return true;
        };
        let origin = origin.strip_suffix(b"/").unwrap_or(origin);
        self.origins
            .iter()
            .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin))
    }

    /// The origins this route allows (empty: any).
    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    /// The path's parameter names, in order.
    pub fn params(&self) -> &[String] {
        &self.params
    }

    /// Patterns of the groups a connect hook may grant besides the route's own.
    pub fn hook_groups(&self) -> &[String] {
        &self.hook_groups
    }

    /// The path pattern as configured.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Matches a raw request path (no query string).
    pub fn matches(&self, path: &str) -> Option<RouteMatch<'_>> {
        let rest = path.strip_prefix('/')?;
        let mut values = Vec::with_capacity(self.params.len());
        let mut parts = rest.split('/');
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(lit) => {
                    if part != lit {
                        return None;
                    }
                }
                Segment::Param => {
                    // `.` and `..` are dot-segments (RFC 3986 §5.2.4): a proxy in front may
                    // resolve them before routing, so they never stand for a value.
                    if part.is_empty()
                        || part == "."
                        || part == ".."
                        || !part.bytes().all(is_name_byte)
                    {
                        return None;
                    }
                    values.push(part.to_string());
                }
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(RouteMatch {
            route: self,
            values,
        })
    }

    /// The groups a connection matched with `values` joins.
    pub fn groups_for(&self, values: &[String]) -> Result<Vec<GroupName>, InvalidGroupName> {
        self.groups
            .iter()
            .map(|pieces| {
                let mut name = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => name.push_str(t),
                        Piece::Param(i) => name.push_str(values.get(*i).map_or("", String::as_str)),
                    }
                }
                GroupName::new(&name)
            })
            .collect()
    }
}

/// Finds the first route matching `path`.
pub fn find<'r>(routes: &'r [Route], path: &str) -> Option<RouteMatch<'r>> {
    routes.iter().find_map(|r| r.matches(path))
}

/// `scheme://host[:port]` lowercased, without a trailing slash; `None` if it has a path,
/// query, user info or odd characters.
fn normalize_origin(origin: &str) -> Option<String> {
    let origin = origin.strip_suffix('/').unwrap_or(origin);
    let (scheme, rest) = origin.split_once("://")?;
    let scheme_ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    let host_ok = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    (scheme_ok && host_ok).then(|| origin.to_ascii_lowercase())
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%".contains(&b)
}

fn compile_group(template: &str, params: &[String]) -> Result<Vec<Piece>, RouteError> {
    let bad = || RouteError::BadGroup(template.to_string());
    let mut pieces = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('{') {
            let end = after.find('}').ok_or_else(bad)?;
            let name = &after[..end];
            let index = params
                .iter()
                .position(|p| p == name)
                .ok_or_else(|| RouteError::UnknownParam(template.to_string()))?;
            pieces.push(Piece::Param(index));
            rest = &after[end + 1..];
        } else {
            let end = rest.find('{').unwrap_or(rest.len());
            let text = &rest[..end];
            if !text.bytes().all(is_name_byte) || text.contains('}') {
                return Err(bad());
            }
            pieces.push(Piece::Text(text.to_string()));
            rest = &rest[end..];
        }
    }
    if pieces.is_empty() {
        return Err(bad());
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str, groups: &[&str]) -> Result<Route, RouteError> {
        Route::compile(&RouteConfig {
            path: path.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            auth: AuthMode::None,
            sub_param: None,
            hook_groups: Vec::new(),
            presence: false,
            origins: Vec::new(),
        })
    }

    #[test]
    fn seed_route() {
        let r = route("/message/{user_id}/stream/", &["user.{user_id}"]).unwrap();
        let m = r.matches("/message/42/stream/").unwrap();
        assert_eq!(r.groups_for(&m.values).unwrap()[0].as_str(), "user.42");
        for bad in [
            "/message/42/stream",
            "/message//stream/",
            "/message/4%2F2/stream/",
            "/message/../stream/",
            "/message/./stream/",
            "/message/%2e%2e/stream/",
            "/message/42/stream/x",
            "/message/a/b/stream/",
            "message/42/stream/",
            "/MESSAGE/42/stream/",
        ] {
            assert!(r.matches(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn several_groups_and_params() {
        let r = route(
            "/t/{team}/u/{user}",
            &["team.{team}", "user.{user}", "news"],
        )
        .unwrap();
        let m = r.matches("/t/red/u/7").unwrap();
        let groups: Vec<_> = r
            .groups_for(&m.values)
            .unwrap()
            .iter()
            .map(|g| g.to_string())
            .collect();
        assert_eq!(groups, ["team.red", "user.7", "news"]);
    }

    #[test]
    fn too_long_group_is_an_error_not_a_panic() {
        let r = route("/m/{id}/", &["user.{id}"]).unwrap();
        let long = "x".repeat(200);
        let m = r.matches(&format!("/m/{long}/")).unwrap();
        assert!(r.groups_for(&m.values).is_err());
    }

    #[test]
    fn bad_routes() {
        assert_eq!(route("x/{a}", &["g"]).unwrap_err(), RouteError::NotAbsolute);
        assert!(matches!(
            route("/a{b}/", &["g"]),
            Err(RouteError::BadSegment(_))
        ));
        assert!(matches!(
            route("/{a}/{a}", &["g"]),
            Err(RouteError::DuplicateParam(_))
        ));
        assert!(matches!(
            route("/{a}", &["g.{b}"]),
            Err(RouteError::UnknownParam(_))
        ));
        assert!(matches!(
            route("/{a}", &["g/{a}"]),
            Err(RouteError::BadGroup(_))
        ));
        assert!(matches!(route("/{a}", &[]), Err(RouteError::NoGroups)));
        let mut config = RouteConfig::seed();
        config.sub_param = Some("nope".into());
        assert!(matches!(
            Route::compile(&config),
            Err(RouteError::UnknownSubParam(_))
        ));
        for bad in [
            "app.example.com",
            "https://a.com/path",
            "https://u@a.com",
            "://x",
        ] {
            let mut config = RouteConfig::seed();
            config.origins = vec![bad.into()];
            assert!(
                matches!(Route::compile(&config), Err(RouteError::BadOrigin(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn sub_param_and_origins() {
        let r = route("/t/{team}/u/{user}", &["user.{user}"]).unwrap();
        assert_eq!(r.sub_param(), Some(0));
        let mut config = RouteConfig::seed();
        config.path = "/t/{team}/u/{user}".into();
        config.groups = vec!["user.{user}".into()];
        config.sub_param = Some("user".into());
        config.origins = vec!["https://App.example.com/".into()];
        let r = Route::compile(&config).unwrap();
        assert_eq!(r.sub_param(), Some(1));
        assert!(r.allows_origin(Some(b"https://app.example.com")));
        assert!(r.allows_origin(Some(b"HTTPS://APP.EXAMPLE.COM/")));
        assert!(r.allows_origin(None));
        assert!(!r.allows_origin(Some(b"https://evil.example.com")));
        assert!(!r.allows_origin(Some(b"https://app.example.com.evil.com")));
        assert!(!r.allows_origin(Some(b"null")));
        assert_eq!(route("/news/", &["news"]).unwrap().sub_param(), None);
    }
}

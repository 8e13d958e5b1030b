//! The opening handshake (RFC 6455 §4.2): checking upgrade headers and computing the accept key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::StatusCode;
use http::header::{
    CONNECTION, HeaderMap, HeaderName, HeaderValue, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use sha1::{Digest, Sha1};

/// The only protocol version there is (RFC 6455 §4.1), as sent in `Sec-WebSocket-Version`.
pub const SUPPORTED_VERSION: &str = "13";

/// The fixed GUID that RFC 6455 §1.3 appends to the client's key.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade request was refused. Answer it with [`status`](Self::status), the
/// [`message`](Self::message) as body and, if any, the [`hint_header`](Self::hint_header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// `Upgrade` is missing or does not name `websocket`: not a WebSocket request.
    #[error("not a websocket upgrade request")]
    NotUpgrade,
    /// `Connection` does not carry the `upgrade` token.
    #[error("connection header lacks the upgrade token")]
    NoConnectionUpgrade,
    /// `Sec-WebSocket-Version` is missing, repeated or not 13; the client should retry with
    /// `Sec-WebSocket-Version: 13`.
    #[error("unsupported websocket version")]
    BadVersion,
    /// `Sec-WebSocket-Key` is missing, repeated, or not base64 of exactly 16 bytes.
    #[error("invalid sec-websocket-key")]
    BadKey,
}

impl HandshakeError {
    /// The HTTP status to answer with: 426 Upgrade Required for a version we do not speak
    /// (RFC 6455 §4.4), 400 Bad Request otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadVersion => StatusCode::UPGRADE_REQUIRED,
            Self::NotUpgrade | Self::NoConnectionUpgrade | Self::BadKey => StatusCode::BAD_REQUEST,
        }
    }

    /// A short explanation for the response body.
    pub fn message(&self) -> &'static str {
        match self {
            Self::NotUpgrade => "expected a websocket upgrade request (Upgrade: websocket)",
            Self::NoConnectionUpgrade => "the Connection header must include \"upgrade\"",
            Self::BadVersion => "unsupported websocket version: send Sec-WebSocket-Version: 13",
            Self::BadKey => "Sec-WebSocket-Key must be base64 of 16 bytes",
        }
    }

    /// A header the response must carry: `Sec-WebSocket-Version: 13` for
    /// [`BadVersion`](Self::BadVersion), telling the client which version to retry with.
    pub fn hint_header(&self) -> Option<(HeaderName, HeaderValue)> {
        match self {
            Self::BadVersion => Some((
                SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static(SUPPORTED_VERSION),
            )),
            Self::NotUpgrade | Self::NoConnectionUpgrade | Self::BadKey => None,
        }
    }
}

/// Checks a client's upgrade request headers and returns the `Sec-WebSocket-Accept` value
/// for the 101 response.
///
/// Requires `Upgrade` to list the `websocket` token, `Connection` to list the `upgrade`
/// token (both case-insensitive, in any of several comma-separated values or headers),
/// exactly one `Sec-WebSocket-Version: 13`, and exactly one `Sec-WebSocket-Key` that is
/// base64 of 16 bytes. The method (GET) and HTTP version are the caller's to check.
pub fn check_upgrade(headers: &HeaderMap) -> Result<String, HandshakeError> {
    if !has_token(headers, &UPGRADE, "websocket") {
        return Err(HandshakeError::NotUpgrade);
    }
    if !has_token(headers, &CONNECTION, "upgrade") {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    let version = single(headers, &SEC_WEBSOCKET_VERSION).ok_or(HandshakeError::BadVersion)?;
    if version.as_bytes().trim_ascii() != SUPPORTED_VERSION.as_bytes() {
        return Err(HandshakeError::BadVersion);
    }
    let key = single(headers, &SEC_WEBSOCKET_KEY).ok_or(HandshakeError::BadKey)?;
    let key = key.as_bytes().trim_ascii();
    if !is_valid_key(key) {
        return Err(HandshakeError::BadKey);
    }
    Ok(accept_key(key))
}

/// The `Sec-WebSocket-Accept` value for a client key: base64 of the SHA-1 of the key
/// followed by the RFC 6455 GUID.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(ACCEPT_GUID);
    STANDARD.encode(sha1.finalize())
}

/// Whether the client offers subprotocol `wanted` in `Sec-WebSocket-Protocol`, which may be
/// sent as several headers, each a comma-separated list. Subprotocol names are compared
/// exactly (they are case-sensitive tokens).
pub fn offers_protocol(headers: &HeaderMap, wanted: &str) -> bool {
    list_items(headers, &SEC_WEBSOCKET_PROTOCOL).any(|item| item == wanted.as_bytes())
}

/// The value of a header that must appear exactly once.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    list_items(headers, name).any(|item| item.eq_ignore_ascii_case(token.as_bytes()))
}

/// The trimmed, non-empty items of a comma-separated header across all its occurrences.
/// Works on raw bytes so that a stray non-ASCII byte in one value does not hide the others.
fn list_items<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// A key is base64 (with padding) of 16 bytes: always exactly 24 characters.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24 && STANDARD.decode(key).is_ok_and(|nonce| nonce.len() == 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                *name,
                HeaderValue::from_str(value).expect("test header value"),
            );
        }
        headers
    }

    fn good() -> Vec<(&'static HeaderName, &'static str)> {
        vec![
            (&UPGRADE, "websocket"),
            (&CONNECTION, "Upgrade"),
            (&SEC_WEBSOCKET_VERSION, "13"),
            (&SEC_WEBSOCKET_KEY, RFC_KEY),
        ]
    }

    fn without(name: &HeaderName) -> Vec<(&'static HeaderName, &'static str)> {
        good().into_iter().filter(|(n, _)| *n != name).collect()
    }

    fn with(name: &HeaderName, value: &'static str) -> Vec<(&'static HeaderName, &'static str)> {
        let mut pairs = without(name);
        pairs.extend(
            good()
                .into_iter()
                .filter(|(n, _)| *n == name)
                .map(|(n, _)| (n, value)),
        );
        pairs
    }

    #[test]
    fn accept_key_matches_the_rfc_example() {
        // RFC 6455 §1.3: 28 characters, the base64 of a 20-byte SHA-1 digest.
        assert_eq!(
            accept_key(RFC_KEY.as_bytes()),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_browser_style_request_is_accepted() {
        assert_eq!(
            check_upgrade(&request(&good())),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_owned())
        );
        // Firefox sends "keep-alive, Upgrade"; tokens are case-insensitive; OWS is allowed.
        let firefox = with(&CONNECTION, "keep-alive, Upgrade");
        assert!(check_upgrade(&request(&firefox)).is_ok());
        let shouting = with(&UPGRADE, "WebSocket");
        assert!(check_upgrade(&request(&shouting)).is_ok());
        let mut split = without(&CONNECTION);
        split.push((&CONNECTION, "keep-alive"));
        split.push((&CONNECTION, " upgrade "));
        assert!(check_upgrade(&request(&split)).is_ok());
    }

    #[test]
    fn missing_or_wrong_upgrade_headers_are_refused() {
        assert_eq!(
            check_upgrade(&request(&without(&UPGRADE))),
            Err(HandshakeError::NotUpgrade)
        );
        assert_eq!(
            check_upgrade(&request(&with(&UPGRADE, "h2c"))),
            Err(HandshakeError::NotUpgrade)
        );
        assert_eq!(
            check_upgrade(&request(&without(&CONNECTION))),
            Err(HandshakeError::NoConnectionUpgrade)
        );
        // "upgrade" must be a whole token, not a substring.
        assert_eq!(
            check_upgrade(&request(&with(&CONNECTION, "keep-alive, upgraded"))),
            Err(HandshakeError::NoConnectionUpgrade)
        );
        assert_eq!(HandshakeError::NotUpgrade.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn versions_other_than_13_get_426_with_a_hint() {
        for pairs in [
            without(&SEC_WEBSOCKET_VERSION),
            with(&SEC_WEBSOCKET_VERSION, "8"),
        ] {
            let err = check_upgrade(&request(&pairs)).expect_err("bad version");
            assert_eq!(err, HandshakeError::BadVersion);
            assert_eq!(err.status(), StatusCode::UPGRADE_REQUIRED);
            let (name, value) = err.hint_header().expect("426 names the version");
            assert_eq!(name, SEC_WEBSOCKET_VERSION);
            assert_eq!(value, "13");
        }
        let mut twice = good();
        twice.push((&SEC_WEBSOCKET_VERSION, "13"));
        assert_eq!(
            check_upgrade(&request(&twice)),
            Err(HandshakeError::BadVersion)
        );
    }

    #[test]
    fn keys_must_be_base64_of_16_bytes() {
        for key in [
            "",
            "dGhlIHNhbXBsZSBub25jZQ",   // unpadded
            "dGhlIHNhbXBsZSBub25jZQ=!", // not base64
            "dGhlIHNhbXBsZSBub25jZXg=", // 17 bytes
            "dGhlIHNhbXBsZSBub25j",     // 15 bytes
            "dGhlIHNhbXBsZSBub25jZR==", // non-canonical trailing bits
        ] {
            let pairs = with(&SEC_WEBSOCKET_KEY, key);
            assert_eq!(
                check_upgrade(&request(&pairs)),
                Err(HandshakeError::BadKey),
                "{key:?}"
            );
        }
        assert_eq!(
            check_upgrade(&request(&without(&SEC_WEBSOCKET_KEY))),
            Err(HandshakeError::BadKey)
        );
        let mut twice = good();
        twice.push((&SEC_WEBSOCKET_KEY, RFC_KEY));
        assert_eq!(check_upgrade(&request(&twice)), Err(HandshakeError::BadKey));
        assert_eq!(HandshakeError::BadKey.status(), StatusCode::BAD_REQUEST);
        assert!(HandshakeError::BadKey.hint_header().is_none());
    }

    #[test]
    fn subprotocol_offers_are_found_in_lists_and_repeated_headers() {
        let headers = request(&[(&SEC_WEBSOCKET_PROTOCOL, "chat, herald.v1")]);
        assert!(offers_protocol(&headers, "herald.v1"));
        assert!(!offers_protocol(&headers, "herald.v2"));
        assert!(!offers_protocol(&headers, "herald"));
        let headers = request(&[
            (&SEC_WEBSOCKET_PROTOCOL, "chat"),
            (&SEC_WEBSOCKET_PROTOCOL, " herald.v1"),
        ]);
        assert!(offers_protocol(&headers, "herald.v1"));
        assert!(!offers_protocol(&headers, "HERALD.V1"));
        assert!(!offers_protocol(&HeaderMap::new(), "herald.v1"));
    }
}

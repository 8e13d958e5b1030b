//! Connection tokens: verifying HS256 JWTs, deciding whether one grants a route's groups,
//! and minting them (`herald token`).
//!
//! A token is `{"sub": "42", "exp": 1767225600, "nbf"?: ..., "groups"?: ["user.42", "news.*"]}`
//! signed with one of the `[auth]` secrets. Several secrets are accepted at once so they can
//! be rotated: sign with the new one, verify with both, then drop the old one.
//!
//! jsonwebtoken 10 needs a crypto backend; both of its own (`rust_crypto`, `aws_lc_rs`)
//! bring code herald never uses (RSA, elliptic curves, or a C build), so this module
//! installs a provider that knows HS256 only, on the small `hmac` + `sha2` crates.

use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_core::GroupName;
use hmac::{Hmac, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::Sha256;

use crate::close;
use crate::route::Route;

/// Tokens longer than this are refused unread: no legitimate token comes near it, and
/// verifying costs time proportional to the length.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The claims herald reads. Other claims (`iat`, `aud`, ...) are allowed and ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user the token speaks for; bound to the route's subject parameter. A JSON
    /// number is accepted too (`"sub": 42`), as some issuers write ids that way.
    #[serde(deserialize_with = "string_or_number")]
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Group patterns the token grants: exact names, `prefix.*`, or `*`. When present it
    /// replaces the default grant (the route's groups for `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Sub {
        Text(String),
        Number(u64),
    }
    Ok(match Sub::deserialize(d)? {
        Sub::Text(s) => s,
        Sub::Number(n) => n.to_string(),
    })
}

/// Why a connection is not authorized; each maps to its close code (DESIGN.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The route needs a token and none was given.
    #[error("token required")]
    Missing,
    /// The token is malformed, not HS256, badly signed, or not valid yet.
    #[error("invalid token")]
    Invalid,
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// A valid token that does not grant this route's groups.
    #[error("token does not grant this route")]
    Forbidden,
}

impl Refusal {
    /// The close code the connection gets: 4501, 4003 or 4503.
    pub fn close_code(self) -> u16 {
        match self {
            Refusal::Missing | Refusal::Invalid => close::UNAUTHORIZED,
            Refusal::Expired => close::TOKEN_EXPIRED,
            Refusal::Forbidden => close::FORBIDDEN,
        }
    }

    /// The close reason (short, fixed text: never echoes the token).
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "token required",
            Refusal::Invalid => "invalid token",
            Refusal::Expired => "token expired",
            Refusal::Forbidden => "token does not grant this route",
        }
    }
}

/// A successful authorization: what the connection must remember.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// When the token stops being valid (its `exp` plus the leeway), in Unix seconds.
    pub valid_until: u64,
    /// The token's `sub`: who the connection is, for presence.
    pub sub: String,
}

impl Grant {
    /// The moment the connection must be closed with 4003, on the runtime's clock.
    /// A token valid for longer than [`MAX_DEADLINE`] (an `exp` near `u64::MAX` is a valid
    /// JWT) is treated as valid for that long: the clock's `Instant` cannot hold more.
    pub fn deadline(&self) -> tokio::time::Instant {
        let left =
            Duration::from_secs(self.valid_until.saturating_sub(unix_now())).min(MAX_DEADLINE);
        let now = tokio::time::Instant::now();
        // 30 years always fit on a monotonic clock; should one not, an hour does, and
        // the connection is then asked to reconnect (4003) long before its token ends.
        now.checked_add(left)
            .unwrap_or_else(|| now + Duration::from_secs(3600))
    }
}

/// The furthest a token's expiry is scheduled: about 30 years, far past any connection's
/// life and well inside what the runtime's clock can add without overflowing.
pub const MAX_DEADLINE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// The longest `herald token --ttl` mints: a year. Longer-lived connection tokens are a
/// leaked-credential risk, not a convenience.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Verifies tokens against the configured secrets.
pub struct Authenticator {
    keys: Vec<DecodingKey>,
    validation: Validation,
    leeway: u64,
}

impl std::fmt::Debug for Authenticator {
    // Hand-written so the secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl Authenticator {
    /// An authenticator accepting tokens signed with any of `secrets`. With no secret every
    /// token is refused (config validation demands one when a route uses tokens).
    pub fn new(secrets: &[Vec<u8>], leeway: Duration) -> Self {
        install_provider();
        let mut validation = Validation::new(Algorithm::HS256);
        // `sub` is required too, but checked by `Claims` itself so a numeric `sub` passes.
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // herald names no audience; a token that carries one is still fine.
        validation.validate_aud = false;
        validation.leeway = leeway.as_secs();
        Self {
            keys: secrets
                .iter()
                .map(|s| DecodingKey::from_secret(s))
                .collect(),
            validation,
            leeway: leeway.as_secs(),
        }
    }

    /// Checks the signature (against each secret in turn), `exp` and `nbf`.
    pub fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        if token.is_empty() {
            return Err(Refusal::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::Invalid);
        }
        for key in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                // An expiry further out than any sane issuer sets (herald mints at most
                // a year) is a forged or broken token, not a convenience.
                Ok(data) if data.claims.exp > unix_now().saturating_add(MAX_DEADLINE.as_secs()) => {
                    return Err(Refusal::Invalid);
                }
                Ok(data) => return Ok(data.claims),
                // Another secret may have signed it (rotation).
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => {
                    return Err(Refusal::Expired);
                }
                Err(_) => return Err(Refusal::Invalid),
            }
        }
        Err(Refusal::Invalid)
    }

    /// Authorizes a connection to `route` matched with `values`, joining `groups`.
    pub fn authorize(
        &self,
        token: Option<&str>,
        route: &Route,
        values: &[String],
        groups: &[GroupName],
    ) -> Result<Grant, Refusal> {
        let claims = self.verify(token.ok_or(Refusal::Missing)?)?;
        if !grants(&claims, route, values, groups) {
            return Err(Refusal::Forbidden);
        }
        Ok(Grant {
            valid_until: claims.exp.saturating_add(self.leeway),
            sub: claims.sub,
        })
    }
}

/// Whether `claims` grant a connection to `route` (matched with `values`) that joins
/// `groups`.
///
/// With a `groups` claim, every group must match one of its patterns. Without one, the
/// default grant: the route's groups computed with the subject parameter set to `sub`
/// must be exactly `groups` — user 42's token yields `user.42`, never `user.43`.
pub fn grants(claims: &Claims, route: &Route, values: &[String], groups: &[GroupName]) -> bool {
    if let Some(patterns) = &claims.groups {
        return groups
            .iter()
            .all(|g| patterns.iter().any(|p| pattern_matches(p, g.as_str())));
    }
    let Some(index) = route.sub_param() else {
        // No parameter: the route's groups do not depend on who connects.
        return true;
    };
    let mut as_sub = values.to_vec();
    match as_sub.get_mut(index) {
        Some(value) => value.clone_from(&claims.sub),
        None => return false,
    }
    route
        .groups_for(&as_sub)
        .is_ok_and(|granted| granted == groups)
}

/// `*` matches every group, `prefix.*` every group under `prefix.`, anything else exactly
/// that group.
pub fn pattern_matches(pattern: &str, group: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => group
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|rest| !rest.is_empty()),
        None => pattern == group,
    }
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// No secret to sign with.
    #[error("no secret configured: set [auth] secret, secrets or secret_file, or pass --secret")]
    NoSecret,
    /// The secret is shorter than the server accepts.
    #[error("the secret needs at least {} bytes", crate::config::MIN_SECRET_BYTES)]
    WeakSecret,
    /// A group pattern is neither a group name nor `prefix.*`/`*`.
    #[error("invalid group pattern {0:?}")]
    BadPattern(String),
    /// The requested lifetime is longer than [`MAX_TOKEN_TTL`].
    #[error("the ttl is longer than the maximum of {} days", MAX_TOKEN_TTL.as_secs() / 86400)]
    TtlTooLong,
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// Signs a token for `sub` valid for `ttl` from now, optionally limited to `groups`.
pub fn mint(
    secret: &[u8],
    sub: &str,
    groups: Option<Vec<String>>,
    ttl: Duration,
) -> Result<String, MintError> {
    if secret.is_empty() {
        return Err(MintError::NoSecret);
    }
    if ttl > MAX_TOKEN_TTL {
        return Err(MintError::TtlTooLong);
    }
    if secret.len() < crate::config::MIN_SECRET_BYTES {
        // A server would refuse this secret at startup, so no server could verify it.
        return Err(MintError::WeakSecret);
    }
    if let Some(patterns) = &groups {
        if let Some(bad) = patterns.iter().find(|p| !is_valid_pattern(p)) {
            return Err(MintError::BadPattern(bad.clone()));
        }
    }
    let claims = Claims {
        sub: sub.to_string(),
        exp: unix_now().saturating_add(ttl.as_secs()),
        nbf: None,
        groups,
    };
    sign(secret, &claims)
}

/// Signs arbitrary claims (tests use it for expired or odd tokens).
pub fn sign(secret: &[u8], claims: &Claims) -> Result<String, MintError> {
    install_provider();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| MintError::Sign(e.to_string()))
}

/// Whether `pattern` is `*`, `prefix.*` with a valid group-name prefix, or a group name.
pub fn is_valid_pattern(pattern: &str) -> bool {
    pattern == "*" || GroupName::new(pattern.strip_suffix(".*").unwrap_or(pattern)).is_ok()
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---- the HS256-only crypto provider --------------------------------------------------

type HmacSha256 = Hmac<Sha256>;

static HS256_ONLY: CryptoProvider = CryptoProvider {
    signer_factory: hs256_signer,
    verifier_factory: hs256_verifier,
    // herald reads no JWKs; these are never called.
    jwk_utils: JwkUtils::new_unimplemented(),
};

/// Makes the HS256 provider jsonwebtoken's process default, once. If the embedding
/// program installed its own first, that one stays (any provider does HS256).
fn install_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = HS256_ONLY.install_default();
    });
}

struct Hs256(HmacSha256);

impl signature::Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

impl signature::Verifier<Vec<u8>> for Hs256 {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let mut mac = self.0.clone();
        mac.update(msg);
        // `verify_slice` compares in constant time.
        mac.verify_slice(signature)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

fn hs256(alg: &Algorithm, secret: &[u8]) -> jsonwebtoken::errors::Result<Hs256> {
    if *alg != Algorithm::HS256 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    HmacSha256::new_from_slice(secret)
        .map(Hs256)
        .map_err(|_| ErrorKind::InvalidKeyFormat.into())
}

fn hs256_signer(
    alg: &Algorithm,
    key: &EncodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    Ok(Box::new(hs256(alg, key.try_get_hmac_secret()?)?))
}

fn hs256_verifier(
    alg: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    Ok(Box::new(hs256(alg, key.try_get_hmac_secret()?)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn seed_route() -> Route {
        Route::compile(&RouteConfig::seed()).unwrap()
    }

    fn claims(sub: &str, exp: u64) -> Claims {
        Claims {
            sub: sub.into(),
            exp,
            nbf: None,
            groups: None,
        }
    }

    fn groups(names: &[&str]) -> Vec<GroupName> {
        names.iter().map(|n| GroupName::new(n).unwrap()).collect()
    }

    #[test]
    fn a_far_future_exp_is_refused_and_never_overflows_the_clock() {
        let auth = Authenticator::new(&[SECRET.to_vec()], Duration::from_secs(3600));
        for exp in [
            u64::MAX,
            u64::MAX / 2,
            1 << 63,
            unix_now() + MAX_DEADLINE.as_secs() + 1,
        ] {
            let token = sign(SECRET, &claims("42", exp)).unwrap();
            assert_eq!(auth.verify(&token), Err(Refusal::Invalid), "exp {exp}");
        }
        // The deadline saturates whatever a grant holds.
        let far = Grant {
            valid_until: u64::MAX,
            sub: "7".into(),
        }
        .deadline();
        assert!(far > tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600));
        let past = Grant {
            valid_until: 0,
            sub: "7".into(),
        }
        .deadline();
        assert!(past <= tokio::time::Instant::now());
    }

    #[test]
    fn mint_refuses_absurd_ttls() {
        let too_long = MAX_TOKEN_TTL + Duration::from_secs(1);
        assert!(matches!(
            mint(SECRET, "42", None, too_long),
            Err(MintError::TtlTooLong)
        ));
        assert!(matches!(
            mint(SECRET, "42", None, Duration::from_secs(u64::MAX)),
            Err(MintError::TtlTooLong)
        ));
        assert!(mint(SECRET, "42", None, MAX_TOKEN_TTL).is_ok());
    }

    #[test]
    fn default_grant_binds_sub_to_the_route_parameter() {
        let auth = Authenticator::new(&[SECRET.to_vec()], Duration::ZERO);
        let route = seed_route();
        let token = mint(SECRET, "42", None, Duration::from_secs(60)).unwrap();
        let own = auth.authorize(Some(&token), &route, &["42".into()], &groups(&["user.42"]));
        assert!(own.is_ok());
        let other = auth.authorize(Some(&token), &route, &["43".into()], &groups(&["user.43"]));
        assert_eq!(other, Err(Refusal::Forbidden));
        assert_eq!(
            auth.authorize(None, &route, &["42".into()], &groups(&["user.42"])),
            Err(Refusal::Missing)
        );
    }

    #[test]
    fn failures_map_to_their_codes() {
        let auth = Authenticator::new(&[SECRET.to_vec()], Duration::ZERO);
        let expired = sign(SECRET, &claims("42", unix_now() - 10)).unwrap();
        assert_eq!(auth.verify(&expired), Err(Refusal::Expired));
        assert_eq!(Refusal::Expired.close_code(), 4003);
        let wrong = sign(
            b"another-secret-another-secret-xx",
            &claims("42", unix_now() + 60),
        );
        assert_eq!(auth.verify(&wrong.unwrap()), Err(Refusal::Invalid));
        assert_eq!(auth.verify("not.a.token"), Err(Refusal::Invalid));
        assert_eq!(auth.verify(""), Err(Refusal::Missing));
        let mut future = claims("42", unix_now() + 600);
        future.nbf = Some(unix_now() + 300);
        assert_eq!(
            auth.verify(&sign(SECRET, &future).unwrap()),
            Err(Refusal::Invalid)
        );
        assert_eq!(Refusal::Invalid.close_code(), 4501);
        assert_eq!(Refusal::Forbidden.close_code(), 4503);
    }

    #[test]
    fn other_algorithms_are_refused() {
        let auth = Authenticator::new(&[SECRET.to_vec()], Duration::ZERO);
        // {"alg":"none"} with an empty signature, and HS512.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiI0MiIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(auth.verify(none), Err(Refusal::Invalid));
        let hs512 =
            "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI0MiIsImV4cCI6OTk5OTk5OTk5OX0.AAAA";
        assert_eq!(auth.verify(hs512), Err(Refusal::Invalid));
    }

    #[test]
    fn rotation_accepts_every_configured_secret() {
        let old = b"old-secret-old-secret-old-secret".to_vec();
        let new = b"new-secret-new-secret-new-secret".to_vec();
        let auth = Authenticator::new(&[new.clone(), old.clone()], Duration::ZERO);
        for secret in [&old, &new] {
            let token = mint(secret, "7", None, Duration::from_secs(60)).unwrap();
            assert_eq!(auth.verify(&token).unwrap().sub, "7");
        }
    }

    #[test]
    fn numeric_sub_is_read_as_text() {
        let auth = Authenticator::new(&[SECRET.to_vec()], Duration::ZERO);
        let body = serde_json::json!({"sub": 42, "exp": unix_now() + 60});
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &body,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(auth.verify(&token).unwrap().sub, "42");
        let no_sub = serde_json::json!({"exp": unix_now() + 60});
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &no_sub,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(auth.verify(&token), Err(Refusal::Invalid));
    }

    #[test]
    fn group_patterns() {
        assert!(pattern_matches("news.*", "news.sport"));
        assert!(pattern_matches("news.*", "news.a.b"));
        assert!(!pattern_matches("news.*", "news"));
        assert!(!pattern_matches("news.*", "news."));
        assert!(!pattern_matches("news.*", "newsroom.x"));
        assert!(pattern_matches("user.42", "user.42"));
        assert!(!pattern_matches("user.42", "user.421"));
        assert!(pattern_matches("*", "anything"));
        assert!(!pattern_matches("us*", "user.1"));
        let route = seed_route();
        let mut c = claims("1", 0);
        c.groups = Some(vec!["user.*".into()]);
        assert!(grants(&c, &route, &["99".into()], &groups(&["user.99"])));
        c.groups = Some(vec!["news.*".into()]);
        assert!(!grants(&c, &route, &["1".into()], &groups(&["user.1"])));
        assert!(is_valid_pattern("news.*") && is_valid_pattern("*") && is_valid_pattern("a"));
        assert!(!is_valid_pattern("a b") && !is_valid_pattern(".*") && !is_valid_pattern(""));
    }
}

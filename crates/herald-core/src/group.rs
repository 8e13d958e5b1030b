//! `GroupName`: a group name validated once, at the edge, and cheap to clone afterwards.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// The longest group name accepted, in bytes (Django Channels' rule: fewer than 100).
pub const MAX_GROUP_NAME_LEN: usize = 99;

/// A group name matching `^[A-Za-z0-9._-]{1,99}$`, the rule Django Channels applies, so
/// that every herald group is also a valid channels group.
///
/// Cloning is a reference-count increment: the hub and every queued frame share one
/// allocation per name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName(Arc<str>);

/// Why a string is not a valid group name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidGroupName {
    /// The name is empty.
    #[error("group name is empty")]
    Empty,
    /// The name is longer than [`MAX_GROUP_NAME_LEN`] bytes.
    #[error("group name is longer than {MAX_GROUP_NAME_LEN} characters")]
    TooLong,
    /// The name contains a character outside `[A-Za-z0-9._-]`.
    #[error("group name may only contain letters, digits, '.', '_' and '-'")]
    BadCharacter,
}

/// Whether `b` may appear in a group name (and in a route's `{name}` segment).
pub fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

impl GroupName {
    /// Validates `name` and wraps it.
    pub fn new(name: &str) -> Result<Self, InvalidGroupName> {
        if name.is_empty() {
            return Err(InvalidGroupName::Empty);
        }
        if name.len() > MAX_GROUP_NAME_LEN {
            return Err(InvalidGroupName::TooLong);
        }
        if !name.bytes().all(is_name_byte) {
            return Err(InvalidGroupName::BadCharacter);
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for GroupName {
    type Error = InvalidGroupName;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl std::str::FromStr for GroupName {
    type Err = InvalidGroupName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Borrow<str> for GroupName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for GroupName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_channels_names() {
        for ok in [
            "user.42",
            "a",
            "user_alice",
            "news-feed.EU",
            &"x".repeat(99),
        ] {
            assert!(GroupName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(GroupName::new(""), Err(InvalidGroupName::Empty));
        assert_eq!(
            GroupName::new(&"x".repeat(100)),
            Err(InvalidGroupName::TooLong)
        );
        for bad in ["a b", "user/42", "ü", "a:b", "a\0", "%2F", "user!x"] {
            assert_eq!(
                GroupName::new(bad),
                Err(InvalidGroupName::BadCharacter),
                "{bad}"
            );
        }
    }
}

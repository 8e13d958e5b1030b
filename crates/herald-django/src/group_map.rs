//! How a herald group name maps to a channels group name, and back.
//!
//! Rules are pairs of templates such as `herald = "user.{id}"`, `channels = "user_{id}"`.
//! `{name}` matches one or more group-name characters (`[A-Za-z0-9._-]`); everything else
//! is literal. herald → channels: the first rule whose `herald` template matches wins; no
//! match (or no rules) means the identity. channels → herald (needed only by the pubsub
//! backend, whose messages do not carry herald's group): the first rule whose `channels`
//! template matches *and* whose result maps forward to the same channels group; else the
//! identity when that is consistent. Keep the mapping one-to-one.

use std::collections::HashMap;

use herald_core::GroupName;
use herald_core::group::is_name_byte;
use serde::Deserialize;

/// One mapping rule; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMapRule {
    /// Template over herald group names, e.g. `"user.{id}"`.
    pub herald: String,
    /// Template over channels group names, e.g. `"user_{id}"`, using the same placeholders.
    pub channels: String,
}

/// A mapping rule is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("group_map rule {index}: {reason}")]
pub struct InvalidRule {
    /// Position of the rule in the list, from 0.
    pub index: usize,
    /// What is wrong with it.
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(String),
}

#[derive(Clone, Debug)]
struct Template {
    parts: Vec<Part>,
}

impl Template {
    fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('{') {
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("unclosed '{{' in {text:?}"))?;
                let name = &after[..end];
                let valid_name = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid_name {
                    return Err(format!("bad placeholder {{{name}}} in {text:?}"));
                }
                if matches!(parts.last(), Some(Part::Var(_))) {
                    // "{a}{b}" has no single reading; refuse rather than guess.
                    return Err(format!("two placeholders touch in {text:?}"));
                }
                if parts.iter().any(|p| *p == Part::Var(name.to_owned())) {
                    return Err(format!("placeholder {{{name}}} used twice in {text:?}"));
                }
                parts.push(Part::Var(name.to_owned()));
                rest = &after[end + 1..];
            } else {
                let end = rest.find('{').unwrap_or(rest.len());
                let literal = &rest[..end];
                if !literal.bytes().all(is_name_byte) {
                    return Err(format!(
                        "{text:?} may only contain [A-Za-z0-9._-] outside placeholders"
                    ));
                }
                parts.push(Part::Literal(literal.to_owned()));
                rest = &rest[end..];
            }
        }
        if parts.is_empty() {
            return Err("empty template".to_owned());
        }
        Ok(Self { parts })
    }

    fn vars(&self) -> Vec<&str> {
        let mut vars: Vec<&str> = self
            .parts
            .iter()
            .filter_map(|p| match p {
                Part::Var(v) => Some(v.as_str()),
                Part::Literal(_) => None,
            })
            .collect();
        vars.sort_unstable();
        vars
    }

    /// The placeholder values if `name` matches; the leftmost placeholder takes the
    /// shortest value that lets the rest match.
    fn capture<'a>(&'a self, name: &'a str) -> Option<HashMap<&'a str, &'a str>> {
        let mut captured = HashMap::new();
        if capture_from(&self.parts, name, &mut captured) {
            Some(captured)
        } else {
            None
        }
    }

    fn render(&self, values: &HashMap<&str, &str>) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Var(v) => out.push_str(values.get(v.as_str())?),
            }
        }
        Some(out)
    }
}

fn capture_from<'a>(
    parts: &'a [Part],
    name: &'a str,
    captured: &mut HashMap<&'a str, &'a str>,
) -> bool {
    match parts.split_first() {
        None => name.is_empty(),
        Some((Part::Literal(l), rest)) => match name.strip_prefix(l.as_str()) {
            Some(tail) => capture_from(rest, tail, captured),
            None => false,
        },
        Some((Part::Var(v), rest)) => {
            // Names are at most 99 bytes, so this backtracking stays tiny.
            for end in 1..=name.len() {
                if !name.is_char_boundary(end) {
                    continue;
                }
                let (value, tail) = name.split_at(end);
                if !value.bytes().all(is_name_byte) {
                    return false;
                }
                captured.insert(v.as_str(), value);
                if capture_from(rest, tail, captured) {
                    return true;
                }
            }
            captured.remove(v.as_str());
            false
        }
    }
}

/// The compiled list of rules.
#[derive(Clone, Debug, Default)]
pub struct GroupMap {
    rules: Vec<(Template, Template)>,
}

/// Whether `name` is a valid channels group name (`^[A-Za-z0-9._-]+$`, fewer than 100).
pub fn is_channels_group_name(name: &str) -> bool {
    !name.is_empty() && name.len() < 100 && name.bytes().all(is_name_byte)
}

impl GroupMap {
    /// Compiles `rules`, checking each template and that both sides use the same
    /// placeholders.
    pub fn new(rules: &[GroupMapRule]) -> Result<Self, InvalidRule> {
        let mut compiled = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            let invalid = |reason: String| InvalidRule { index, reason };
            let herald = Template::parse(&rule.herald).map_err(invalid)?;
            let channels = Template::parse(&rule.channels).map_err(invalid)?;
            if herald.vars() != channels.vars() {
                return Err(invalid(format!(
                    "{:?} and {:?} must use the same placeholders",
                    rule.herald, rule.channels
                )));
            }
            compiled.push((herald, channels));
        }
        Ok(Self { rules: compiled })
    }

    /// The channels group for a herald group, or `None` when the mapped name is not a
    /// valid channels group name (too long).
    pub fn to_channels(&self, group: &GroupName) -> Option<String> {
        let name = group.as_str();
        let mapped = self
            .rules
            .iter()
            .find_map(|(herald, channels)| channels.render(&herald.capture(name)?))
            .unwrap_or_else(|| name.to_owned());
        is_channels_group_name(&mapped).then_some(mapped)
    }

    /// The herald group whose messages a channels group carries (see the module docs).
    pub fn to_herald(&self, channels_group: &str) -> Option<GroupName> {
        let consistent = |candidate: &str| {
            let group = GroupName::new(candidate).ok()?;
            (self.to_channels(&group).as_deref() == Some(channels_group)).then_some(group)
        };
        self.rules
            .iter()
            .find_map(|(herald, channels)| {
                consistent(&herald.render(&channels.capture(channels_group)?)?)
            })
            .or_else(|| consistent(channels_group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(herald: &str, channels: &str) -> GroupMapRule {
        GroupMapRule {
            herald: herald.into(),
            channels: channels.into(),
        }
    }

    fn g(name: &str) -> GroupName {
        GroupName::new(name).unwrap()
    }

    #[test]
    fn identity_by_default() {
        let map = GroupMap::new(&[]).unwrap();
        assert_eq!(map.to_channels(&g("user.42")).as_deref(), Some("user.42"));
        assert_eq!(map.to_herald("user.42"), Some(g("user.42")));
    }

    #[test]
    fn first_rule_wins_and_inverts() {
        let map = GroupMap::new(&[
            rule("user.{id}", "user_{id}"),
            rule("room.{a}.{b}", "r-{b}-{a}"),
            rule("user.{id}", "never_{id}"),
        ])
        .unwrap();
        assert_eq!(map.to_channels(&g("user.42")).as_deref(), Some("user_42"));
        assert_eq!(map.to_herald("user_42"), Some(g("user.42")));
        assert_eq!(map.to_channels(&g("room.x.y")).as_deref(), Some("r-y-x"));
        assert_eq!(map.to_herald("r-y-x"), Some(g("room.x.y")));
        // No rule: identity, both ways.
        assert_eq!(map.to_channels(&g("news")).as_deref(), Some("news"));
        assert_eq!(map.to_herald("news"), Some(g("news")));
        // "user.42" as a channels name would map forward to "user_42", not to itself,
        // so it names no herald group.
        assert_eq!(map.to_herald("user.42"), None);
        // The shadowed third rule never applies backwards either.
        assert_eq!(map.to_herald("never_42"), Some(g("never_42")));
    }

    #[test]
    fn rejects_bad_rules() {
        for (herald, channels) in [
            ("user.{id}", "user_{uid}"),
            ("user.{id", "user_{id}"),
            ("{a}{b}", "{a}.{b}"),
            ("user/{id}", "user_{id}"),
            ("", "x"),
            ("{}", "{}"),
            ("{a}.{a}", "{a}"),
        ] {
            assert!(
                GroupMap::new(&[rule(herald, channels)]).is_err(),
                "{herald} {channels}"
            );
        }
    }

    #[test]
    fn too_long_results_are_refused() {
        let map = GroupMap::new(&[rule("u.{id}", "a-much-longer-prefix-{id}")]).unwrap();
        let long = format!("u.{}", "x".repeat(90));
        assert_eq!(map.to_channels(&g(&long)), None);
    }
}

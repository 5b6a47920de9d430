//! Label and field selectors, with apimachinery's grammar and semantics.
//!
//! Label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
//! `k` (exists) and `!k` (does not exist), comma-separated (AND).
//! `!=` and `notin` also match objects that lack the key.
//!
//! Field selectors: `f=v`, `f==v`, `f!=v`, comma-separated; values may be
//! empty. Which fields may be used is decided per kind by the strategy.

use std::collections::BTreeMap;

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelReq {
    /// `k=v` / `k==v` / `k in (...)`.
    In(String, Vec<String>),
    /// `k!=v` / `k notin (...)`.
    NotIn(String, Vec<String>),
    /// `k`.
    Exists(String),
    /// `!k`.
    NotExists(String),
}

/// A parsed label selector (all requirements must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// The requirements, ANDed.
    pub reqs: Vec<LabelReq>,
}

/// One field requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldReq {
    /// The field path, e.g. `metadata.name`.
    pub field: String,
    /// `true` for `!=`.
    pub negate: bool,
    /// The value (may be empty).
    pub value: String,
}

/// A parsed field selector (all requirements must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// The requirements, ANDed.
    pub reqs: Vec<FieldReq>,
}

fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 || !crate::validation::is_dns1123_subdomain(p) {
            return false;
        }
    }
    valid_label_value(name) && !name.is_empty()
}

/// A label value: at most 63 characters of `[A-Za-z0-9_.-]`, beginning and
/// ending with an alphanumeric (or empty).
pub fn valid_label_value(v: &str) -> bool {
    if v.is_empty() {
        return true;
    }
    let b = v.as_bytes();
    v.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("found '{rest}', expected: '('"))?;
    let mut values = Vec::new();
    for v in inner.split(',') {
        let v = v.trim();
        if !valid_label_value(v) {
            return Err(format!("invalid label value: \"{v}\""));
        }
        values.push(v.to_string());
    }
    Ok(values)
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector { reqs });
        }
        for part in split_top(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err("found '', expected: identifier".into());
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                LabelReq::NotExists(key.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                LabelReq::NotIn(k.trim().into(), vec![v.trim().into()])
            } else if let Some((k, v)) = part.split_once("==") {
                LabelReq::In(k.trim().into(), vec![v.trim().into()])
            } else if let Some((k, v)) = part.split_once('=') {
                LabelReq::In(k.trim().into(), vec![v.trim().into()])
            } else if let Some((k, rest)) = split_word(part, "notin") {
                LabelReq::NotIn(k.into(), parse_set(rest)?)
            } else if let Some((k, rest)) = split_word(part, "in") {
                LabelReq::In(k.into(), parse_set(rest)?)
            } else {
                LabelReq::Exists(part.to_string())
            };
            let (key, values) = match &req {
                LabelReq::In(k, v) | LabelReq::NotIn(k, v) => (k, v.as_slice()),
                LabelReq::Exists(k) | LabelReq::NotExists(k) => (k, &[][..]),
            };
            if !valid_label_key(key) {
                return Err(format!("invalid label key \"{key}\""));
            }
            if let Some(bad) = values.iter().find(|v| !valid_label_value(v)) {
                return Err(format!("invalid label value: \"{bad}\""));
            }
            reqs.push(req);
        }
        Ok(LabelSelector { reqs })
    }

    /// Builds `k=v,...` from a `matchLabels` map.
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        LabelSelector {
            reqs: map
                .iter()
                .map(|(k, v)| LabelReq::In(k.clone(), vec![v.clone()]))
                .collect(),
        }
    }

    /// True when there is no requirement.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Evaluates the selector against a label map.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| match r {
            LabelReq::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            LabelReq::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            LabelReq::Exists(k) => labels.contains_key(k),
            LabelReq::NotExists(k) => !labels.contains_key(k),
        })
    }
}

impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .reqs
            .iter()
            .map(|r| match r {
                LabelReq::In(k, v) if v.len() == 1 => format!("{k}={}", v[0]),
                LabelReq::In(k, v) => format!("{k} in ({})", v.join(",")),
                LabelReq::NotIn(k, v) if v.len() == 1 => format!("{k}!={}", v[0]),
                LabelReq::NotIn(k, v) => format!("{k} notin ({})", v.join(",")),
                LabelReq::Exists(k) => k.clone(),
                LabelReq::NotExists(k) => format!("!{k}"),
            })
            .collect();
        write!(f, "{}", parts.join(","))
    }
}

/// Splits `key <word> rest` where `word` is surrounded by whitespace.
fn split_word<'a>(part: &'a str, word: &str) -> Option<(&'a str, &'a str)> {
    let idx = part
        .find(&format!(" {word} "))
        .or_else(|| part.find(&format!(" {word}(")))?;
    let key = part[..idx].trim();
    let rest = &part[idx + 1 + word.len()..];
    (!key.is_empty()).then_some((key, rest))
}

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector { reqs });
        }
        for part in s.split(',') {
            let part = part.trim();
            let (field, negate, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, false, v)
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ));
            };
            reqs.push(FieldReq {
                field: field.trim().into(),
                negate,
                value: value.trim().into(),
            });
        }
        Ok(FieldSelector { reqs })
    }

    /// True when there is no requirement.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// The value required for `field` by an `=` requirement, if any.
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.reqs
            .iter()
            .find(|r| r.field == field && !r.negate)
            .map(|r| r.value.as_str())
    }

    /// Evaluates the selector; `get` returns a field's value (`None` when
    /// unset, compared as the empty string).
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.reqs.iter().all(|r| {
            let v = get(&r.field).unwrap_or_default();
            (v == r.value) != r.negate
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_operators() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app in (web, db)", true),
            ("app in (db)", false),
            ("app notin (db)", true),
            ("missing notin (db)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("app in (web,db),!missing", true),
            ("", true),
        ];
        for (sel, want) in cases {
            let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn label_errors() {
        for bad in ["app in web", "a=b=c", "-bad=x", "app=(x", ","] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
        assert!(LabelSelector::parse("example.com/app=x").is_ok());
    }

    #[test]
    fn field_selectors() {
        let get = |f: &str| match f {
            "metadata.name" => Some("a".to_string()),
            "spec.nodeName" => None,
            _ => Some("Running".to_string()),
        };
        let ok = |s: &str| FieldSelector::parse(s).unwrap().matches(get);
        assert!(ok("metadata.name=a"));
        assert!(ok("metadata.name==a"));
        assert!(!ok("metadata.name!=a"));
        assert!(ok("spec.nodeName="));
        assert!(!ok("spec.nodeName!="));
        assert!(ok("status.phase!=Succeeded,status.phase!=Failed"));
        assert!(FieldSelector::parse("nonsense").is_err());
        assert_eq!(
            FieldSelector::parse("metadata.name=a")
                .unwrap()
                .exact("metadata.name"),
            Some("a")
        );
    }
}

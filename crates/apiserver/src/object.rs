//! Helpers over objects kept as `serde_json::Value`: typed access to
//! `metadata`, dotted-path reads, timestamps, uids and generated names.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Reads a dotted path (`spec.template.spec`); array indexes are not used.
pub fn path<'a>(obj: &'a Value, dotted: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for part in dotted.split('.') {
        cur = cur.get(part)?;
    }
    Some(cur)
}

/// Reads a dotted path as a string (numbers and bools are rendered).
pub fn path_str(obj: &Value, dotted: &str) -> Option<String> {
    match path(obj, dotted)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads a dotted path as an integer.
pub fn path_i64(obj: &Value, dotted: &str) -> Option<i64> {
    path(obj, dotted)?.as_i64()
}

/// Returns the object at a dotted path, creating intermediate maps.
/// Non-object intermediates are replaced by maps.
pub fn path_mut<'a>(obj: &'a mut Value, dotted: &str) -> &'a mut Value {
    let mut cur = obj;
    for part in dotted.split('.') {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        cur = cur
            .as_object_mut()
            .expect("just made an object")
            .entry(part.to_string())
            .or_insert(Value::Null);
    }
    cur
}

/// Sets a dotted path, creating intermediate maps.
pub fn set_path(obj: &mut Value, dotted: &str, value: Value) {
    *path_mut(obj, dotted) = value;
}

/// Sets a dotted path only when it is absent or null.
pub fn default_path(obj: &mut Value, dotted: &str, value: Value) {
    let slot = path_mut(obj, dotted);
    if slot.is_null() {
        *slot = value;
    }
}

/// Removes a dotted path if present.
pub fn remove_path(obj: &mut Value, dotted: &str) {
    let (parent, last) = match dotted.rsplit_once('.') {
        Some((p, l)) => (path_mut_existing(obj, p), l),
        None => (Some(obj), dotted),
    };
    if let Some(Value::Object(m)) = parent {
        m.remove(last);
    }
}

fn path_mut_existing<'a>(obj: &'a mut Value, dotted: &str) -> Option<&'a mut Value> {
    let mut cur = obj;
    for part in dotted.split('.') {
        cur = cur.get_mut(part)?;
    }
    Some(cur)
}

/// `metadata.name` (empty when unset).
pub fn name(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.namespace` (empty when unset).
pub fn namespace(obj: &Value) -> &str {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.uid` (empty when unset).
pub fn uid(obj: &Value) -> &str {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.labels` as a map (non-string values are skipped).
pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    string_map(obj.pointer("/metadata/labels"))
}

/// A JSON object of strings as a map (non-string values are skipped).
pub fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// `metadata.finalizers` (empty when unset).
pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The `metadata` map, created if missing.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let slot = path_mut(obj, "metadata");
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("metadata is an object")
}

/// Now, as kube writes `metav1.Time`: RFC 3339, UTC, whole seconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Now plus `secs`, in the same format.
pub fn rfc3339_in(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Parses an RFC 3339 timestamp into a UTC time.
pub fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    if getrandom::fill(&mut buf).is_err() {
        // Fall back to the clock; uniqueness matters more than quality here.
        let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as u128;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (nanos >> ((i % 16) * 8)) as u8 ^ i as u8;
        }
    }
    buf
}

/// A random (version 4) UUID.
pub fn new_uid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The 5-character suffix kube appends to `generateName`.
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes::<5>()
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// A random number below `n`.
pub fn random_below(n: u32) -> u32 {
    u32::from_le_bytes(random_bytes::<4>()) % n.max(1)
}

/// Renders an age the way kubectl and kube's printers do
/// (`HumanDuration`: `5s`, `2m30s`, `3h`, `4d`, `2y10d`).
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let d = (hours / 24) % 365;
        return if d == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{d}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// The age of a timestamp field, rendered with [`human_duration`]
/// (`<unknown>` when unset).
pub fn age(obj: &Value, dotted: &str) -> String {
    match path(obj, dotted)
        .and_then(Value::as_str)
        .and_then(parse_time)
    {
        Some(t) => human_duration((chrono::Utc::now() - t).num_seconds()),
        None => "<unknown>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        let mut v = json!({"spec": {"replicas": 3}});
        assert_eq!(path_i64(&v, "spec.replicas"), Some(3));
        set_path(&mut v, "status.replicas", json!(1));
        default_path(&mut v, "spec.replicas", json!(9));
        assert_eq!(
            v,
            json!({"spec": {"replicas": 3}, "status": {"replicas": 1}})
        );
        remove_path(&mut v, "status.replicas");
        assert_eq!(v["status"], json!({}));
    }

    #[test]
    fn durations_like_kube() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(10 * 3600), "10h");
        assert_eq!(human_duration(3 * 86400), "3d");
        assert_eq!(human_duration(30 * 86400), "30d");
    }

    #[test]
    fn ids() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_eq!(name_suffix().len(), 5);
    }
}

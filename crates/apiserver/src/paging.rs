//! Continue tokens for paged lists, in kube's format
//! (apiserver `pkg/storage/continue.go`): base64url of
//! `{"v":"meta.k8s.io/v1","rv":<list revision>,"start":"<next key>"}`, where
//! the key is relative to the list's key prefix. Every page of a list is
//! read at the revision the token carries; `rv: -1` means "the latest"
//! (handed out with a 410 when the original revision was compacted).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Token {
    v: String,
    rv: i64,
    start: String,
}

/// A decoded continue token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continue {
    /// The revision every page is read at (`-1`: the latest).
    pub revision: i64,
    /// The next key, relative to the list prefix.
    pub start: String,
}

/// Encodes the token that resumes a list at `next_key` (absolute) at `revision`.
pub fn encode(prefix: &str, next_key: &str, revision: i64) -> String {
    let start = next_key
        .strip_prefix(prefix)
        .unwrap_or(next_key)
        .to_string();
    let json = serde_json::to_vec(&Token {
        v: "meta.k8s.io/v1".into(),
        rv: revision,
        start,
    })
    .unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// Decodes a token; the error text is what kube answers in a 400.
pub fn decode(token: &str) -> Result<Continue, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .or_else(|_| STANDARD.decode(token))
        .map_err(|_| "continue key is not valid: illegal base64 data".to_string())?;
    let t: Token =
        serde_json::from_slice(&bytes).map_err(|e| format!("continue key is not valid: {e}"))?;
    if t.v != "meta.k8s.io/v1" {
        return Err("continue key is not valid: server does not recognize this encoded key".into());
    }
    if t.rv == 0 || t.rv < -1 {
        return Err("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)".into());
    }
    if t.start.is_empty() {
        return Err(
            "continue key is not valid: encoded start key empty (version meta.k8s.io/v1)".into(),
        );
    }
    if t.start.starts_with('/') || t.start.split('/').any(|p| p == ".." || p == ".") {
        return Err("continue key is not valid: path traversal".into());
    }
    Ok(Continue {
        revision: t.rv,
        start: t.start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = encode("/registry/pods/", "/registry/pods/default/a\u{0}", 42);
        let c = decode(&t).unwrap();
        assert_eq!(
            c,
            Continue {
                revision: 42,
                start: "default/a\u{0}".into()
            }
        );
        assert!(!t.contains('='));
    }

    #[test]
    fn rejects_bad_tokens() {
        assert!(decode("!!!").is_err());
        assert!(
            decode(&URL_SAFE_NO_PAD.encode(b"{\"v\":\"x\",\"rv\":1,\"start\":\"a\"}")).is_err()
        );
        assert!(decode(
            &URL_SAFE_NO_PAD.encode(b"{\"v\":\"meta.k8s.io/v1\",\"rv\":1,\"start\":\"../x\"}")
        )
        .is_err());
        assert!(decode(
            &URL_SAFE_NO_PAD.encode(b"{\"v\":\"meta.k8s.io/v1\",\"rv\":0,\"start\":\"a\"}")
        )
        .is_err());
        assert!(decode(&encode("/p/", "/p/a", -1)).is_ok());
    }
}

//! YAML request bodies (`Content-Type: application/yaml`) converted to JSON,
//! as kube-apiserver does with `sigs.k8s.io/yaml` (go-yaml v2, YAML 1.1
//! scalars: `y`/`yes`/`no`/`on`/`off` are booleans, also as keys, `0755` is octal).
//!
//! Covers what manifests use: block mappings and sequences (compact
//! `- key: v` items, sequences at their key's indentation), flow
//! collections, plain/single/double-quoted scalars (multi-line too), literal
//! and folded block scalars with chomping and indentation indicators,
//! comments, anchors, aliases, `<<` merge keys, the standard `!!` tags, and
//! `---`/`...` markers (only the first document is read, as kube does).
//! Not supported (an error): explicit `?` keys, complex keys, custom tags.

mod flow;

use std::collections::HashMap;

use serde_json::{Map, Value};

use flow::{resolve, Flow, FlowScan};

/// Converts the first YAML document of `text` to JSON; the error reads like
/// go-yaml's (`yaml: line 3: ...`).
pub fn to_json(text: &str) -> Result<Value, String> {
    let mut p = Parser {
        lines: document(text)?,
        pos: 0,
        anchors: HashMap::new(),
        depth: 0,
        aliased: 0,
    };
    let Some(i) = p.next_content() else {
        return Ok(Value::Null);
    };
    let v = p.node(p.lines[i].indent, 0, true)?;
    match p.next_content() {
        Some(j) => Err(err(p.lines[j].no, "did not find expected <document start>")),
        None => Ok(v),
    }
}

pub(crate) fn err(line: usize, msg: &str) -> String {
    format!("yaml: line {line}: {msg}")
}

#[derive(Debug, Clone)]
struct Line {
    /// 1-based line number in the input.
    no: usize,
    indent: usize,
    /// The line after its indentation.
    text: String,
}

impl Line {
    fn blank(&self) -> bool {
        let t = self.text.trim();
        t.is_empty() || t.starts_with('#')
    }
}

/// The lines of the first document.
fn document(text: &str) -> Result<Vec<Line>, String> {
    let mut out = Vec::new();
    let mut started = false;
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        let is_marker = |m: &str| {
            raw == m || raw.starts_with(&format!("{m} ")) || raw.starts_with(&format!("{m}\t"))
        };
        if is_marker("---") {
            if started || out.iter().any(|l: &Line| !l.blank()) {
                break;
            }
            started = true;
            let rest = raw[3..].trim();
            if !(rest.is_empty() || rest.starts_with('#')) {
                return Err(err(no, "content on the '---' line is not supported"));
            }
            continue;
        }
        if is_marker("...") {
            break;
        }
        if raw.starts_with('%') && !started && out.iter().all(Line::blank) {
            continue; // a directive (%YAML, %TAG)
        }
        let body = raw.trim_start_matches(' ');
        out.push(Line {
            no,
            indent: raw.len() - body.len(),
            text: body.trim_end_matches('\r').to_string(),
        });
    }
    Ok(out)
}

/// Nesting limit (as serde_json's), so hostile input cannot exhaust the stack.
pub(crate) const MAX_DEPTH: usize = 128;
/// Nodes that aliases may copy in one document (against "billion laughs").
const MAX_ALIASED: usize = 1_000_000;

struct Parser {
    lines: Vec<Line>,
    pos: usize,
    anchors: HashMap<String, Value>,
    depth: usize,
    /// Nodes copied by aliases so far.
    aliased: usize,
}

/// Depth and node count of a value.
fn shape(v: &Value) -> (usize, usize) {
    let children: Box<dyn Iterator<Item = &Value>> = match v {
        Value::Array(a) => Box::new(a.iter()),
        Value::Object(m) => Box::new(m.values()),
        _ => return (0, 1),
    };
    children.fold((1, 1), |(d, n), c| {
        let (cd, cn) = shape(c);
        (d.max(cd + 1), n + cn)
    })
}

/// `- x` or a lone `-`.
fn is_seq_entry(t: &str) -> bool {
    t == "-" || t.starts_with("- ") || t.starts_with("-\t")
}

/// Where a comment starts (`#` at the start or after whitespace, outside quotes).
fn comment_start(t: &str) -> Option<usize> {
    let b = t.as_bytes();
    (0..b.len()).find(|&i| b[i] == b'#' && (i == 0 || b[i - 1] == b' ' || b[i - 1] == b'\t'))
}

impl Parser {
    /// Skips blank and comment lines; the index of the next content line.
    fn next_content(&mut self) -> Option<usize> {
        while self.pos < self.lines.len() && self.lines[self.pos].blank() {
            self.pos += 1;
        }
        (self.pos < self.lines.len()).then_some(self.pos)
    }

    /// The node starting on the current line (at `indent`), below a parent at `parent`.
    fn node(&mut self, indent: usize, parent: usize, top: bool) -> Result<Value, String> {
        if self.depth >= MAX_DEPTH {
            return Err(err(self.lines[self.pos].no, "exceeded max depth of 128"));
        }
        self.depth += 1;
        let v = self.node_inner(indent, parent, top);
        self.depth -= 1;
        v
    }

    fn node_inner(&mut self, indent: usize, parent: usize, top: bool) -> Result<Value, String> {
        let line = self.lines[self.pos].clone();
        if line.text.starts_with('\t') {
            return Err(err(
                line.no,
                "found a tab character that violates indentation",
            ));
        }
        if is_seq_entry(&line.text) {
            return self.seq(indent);
        }
        if split_key(&line.text, line.no)?.is_some() {
            return self.map(indent);
        }
        self.pos += 1;
        // A lone scalar: continuation lines must be deeper than its parent.
        self.inline(
            &line.text,
            if top { indent } else { parent },
            line.no,
            false,
            top,
        )
    }

    fn map(&mut self, indent: usize) -> Result<Value, String> {
        let mut m = Map::new();
        let mut merges = Vec::new();
        while let Some(i) = self.next_content() {
            let line = self.lines[i].clone();
            if line.indent < indent || (line.indent == indent && is_seq_entry(&line.text)) {
                break;
            }
            if line.indent > indent {
                return Err(err(
                    line.no,
                    "mapping values are not allowed in this context",
                ));
            }
            let Some((key, plain_key, rest)) = split_key(&line.text, line.no)? else {
                return Err(err(line.no, "could not find expected ':'"));
            };
            self.pos = i + 1;
            let v = self.inline(&rest, indent, line.no, true, false)?;
            if plain_key && key == "<<" {
                merges.push((line.no, v));
            } else {
                m.insert(key, v);
            }
        }
        for (no, v) in merges {
            let sources = match v {
                Value::Array(a) => a,
                other => vec![other],
            };
            for src in sources {
                let Value::Object(src) = src else {
                    return Err(err(
                        no,
                        "map merge requires map or sequence of maps as the value",
                    ));
                };
                for (k, v) in src {
                    m.entry(k).or_insert(v);
                }
            }
        }
        Ok(Value::Object(m))
    }

    fn seq(&mut self, indent: usize) -> Result<Value, String> {
        let mut items = Vec::new();
        while let Some(i) = self.next_content() {
            let line = self.lines[i].clone();
            if line.indent < indent || (line.indent == indent && !is_seq_entry(&line.text)) {
                break;
            }
            if line.indent > indent {
                return Err(err(line.no, "did not find expected '-' indicator"));
            }
            let after = &line.text[1..];
            let rest = after.trim_start_matches([' ', '\t']);
            let col = indent + 1 + (after.len() - rest.len());
            let nested = is_seq_entry(rest)
                || (!rest.starts_with(['&', '!', '*']) && split_key(rest, line.no)?.is_some());
            if nested {
                // `- key: v` / `- - x`: the rest of the line is a node at its own column.
                self.lines[i].indent = col;
                self.lines[i].text = rest.to_string();
                self.pos = i;
                items.push(self.node(col, indent, false)?);
            } else {
                self.pos = i + 1;
                items.push(self.inline(rest, indent, line.no, false, false)?);
            }
        }
        Ok(Value::Array(items))
    }

    /// The value written after `key:` or `- ` (or alone on a line), whose
    /// continuation lines must be indented deeper than `parent`.
    fn inline(
        &mut self,
        text: &str,
        parent: usize,
        no: usize,
        in_map: bool,
        top: bool,
    ) -> Result<Value, String> {
        let mut rest = text.trim();
        let (mut anchor, mut tag) = (None, None);
        while rest.starts_with(['&', '!']) {
            let end = rest.find([' ', '\t']).unwrap_or(rest.len());
            let (prop, tail) = rest.split_at(end);
            if let Some(name) = prop.strip_prefix('&') {
                anchor = Some(name.to_string());
            } else {
                tag = Some(prop.to_string());
            }
            rest = tail.trim_start();
        }
        let mut plain = None;
        let value = if rest.is_empty() || rest.starts_with('#') {
            self.block_after(parent, in_map)?
        } else if let Some(name) = rest.strip_prefix('*') {
            let name = name.split([' ', '\t']).next().unwrap_or("");
            let v = self
                .anchors
                .get(name)
                .ok_or_else(|| err(no, &format!("unknown anchor '{name}' referenced")))?;
            // Aliases may not build a document deeper or much larger than its text.
            let (depth, nodes) = shape(v);
            self.aliased += nodes;
            if self.depth + depth > MAX_DEPTH {
                return Err(err(no, "exceeded max depth of 128"));
            }
            if self.aliased > MAX_ALIASED {
                return Err(err(no, "document contains excessive aliasing"));
            }
            v.clone()
        } else if rest.starts_with(['|', '>']) {
            Value::String(self.block_scalar(rest, parent, no)?)
        } else if rest.starts_with(['"', '\'', '[', '{']) {
            let full = self.gather(rest, no)?;
            let mut f = Flow::new(&full, no);
            f.depth = self.depth;
            let v = f.value()?;
            f.end()?;
            v
        } else {
            let s = self.plain(rest, if top { usize::MAX } else { parent }, no)?;
            let v = resolve(&s).map_err(|m| err(no, &m))?;
            plain = Some(s);
            v
        };
        let value = match (tag.as_deref(), plain) {
            (None, _) => value,
            (Some("!!str" | "!!binary" | "!"), Some(s)) => Value::String(s),
            (Some(t), _) if STD_TAGS.contains(&t) => value,
            (Some(t), _) => return Err(err(no, &format!("unsupported tag {t}"))),
        };
        if let Some(a) = anchor {
            self.anchors.insert(a, value.clone());
        }
        Ok(value)
    }

    /// The block node on the following lines (null when there is none).
    fn block_after(&mut self, parent: usize, in_map: bool) -> Result<Value, String> {
        let Some(i) = self.next_content() else {
            return Ok(Value::Null);
        };
        let line = &self.lines[i];
        if line.indent > parent || (in_map && line.indent == parent && is_seq_entry(&line.text)) {
            let indent = line.indent;
            return self.node(indent, parent, false);
        }
        Ok(Value::Null)
    }

    /// A plain scalar, folded over its continuation lines.
    fn plain(&mut self, first: &str, parent: usize, no: usize) -> Result<String, String> {
        if first.starts_with([',', ']', '}', '%', '@', '`']) {
            return Err(err(no, "found character that cannot start any token"));
        }
        let check = |s: &str, no: usize| {
            if s.contains(": ") || s.ends_with(':') || s.contains(":\t") {
                Err(err(no, "mapping values are not allowed in this context"))
            } else {
                Ok(())
            }
        };
        let mut out = match comment_start(first) {
            Some(c) => return check(first[..c].trim(), no).map(|_| first[..c].trim().to_string()),
            None => first.trim().to_string(),
        };
        check(&out, no)?;
        let mut breaks = 0;
        while self.pos < self.lines.len() {
            let line = &self.lines[self.pos];
            let t = line.text.trim();
            if t.is_empty() {
                breaks += 1;
                self.pos += 1;
                continue;
            }
            if (parent != usize::MAX && line.indent <= parent) || t.starts_with('#') {
                break;
            }
            let (text, comment) = match comment_start(t) {
                Some(c) => (t[..c].trim(), true),
                None => (t, false),
            };
            check(text, line.no)?;
            out.push_str(&if breaks == 0 {
                " ".to_string()
            } else {
                "\n".repeat(breaks)
            });
            out.push_str(text);
            breaks = 0;
            self.pos += 1;
            if comment {
                break;
            }
        }
        if breaks > 0 {
            // Blank lines after the scalar belong to the structure; step back over them.
            while self.pos > 0 && self.lines[self.pos - 1].text.trim().is_empty() && breaks > 0 {
                self.pos -= 1;
                breaks -= 1;
            }
        }
        Ok(out)
    }

    /// A quoted scalar or flow collection, joined with the lines it spans.
    fn gather(&mut self, first: &str, no: usize) -> Result<String, String> {
        let mut scan = FlowScan::new();
        let mut buf = first.to_string();
        let mut done = scan.feed(first);
        while !done {
            let Some(line) = self.lines.get(self.pos) else {
                return Err(err(
                    no,
                    "did not find the end of the flow node or quoted scalar",
                ));
            };
            let chunk = format!("\n{}", line.text.trim_end());
            done = scan.feed(&chunk);
            buf.push_str(&chunk);
            self.pos += 1;
        }
        Ok(buf)
    }

    /// `|` or `>` with optional chomping (`-`, `+`) and indentation indicators.
    fn block_scalar(&mut self, header: &str, parent: usize, no: usize) -> Result<String, String> {
        let literal = header.starts_with('|');
        let (mut keep, mut strip, mut explicit) = (false, false, None);
        let mut chars = header[1..].chars();
        let tail = loop {
            match chars.next() {
                Some('+') => keep = true,
                Some('-') => strip = true,
                Some(d @ '1'..='9') => explicit = d.to_digit(10).map(|d| d as usize),
                Some(' ' | '\t') | None => break chars.as_str().trim(),
                Some(_) => return Err(err(no, "did not find expected comment or line break")),
            }
        };
        if !(tail.is_empty() || tail.starts_with('#')) {
            return Err(err(no, "did not find expected comment or line break"));
        }
        let base = explicit.map(|d| parent + d);
        let mut content_indent = base;
        let mut lines: Vec<String> = Vec::new();
        while let Some(line) = self.lines.get(self.pos) {
            if line.text.trim().is_empty() {
                let extra = content_indent.map_or(0, |c| line.indent.saturating_sub(c));
                lines.push(" ".repeat(extra));
                self.pos += 1;
                continue;
            }
            let ci = *content_indent.get_or_insert(line.indent);
            if line.indent <= parent || line.indent < ci {
                break;
            }
            lines.push(format!("{}{}", " ".repeat(line.indent - ci), line.text));
            self.pos += 1;
        }
        // Trailing blank lines: counted for chomping, and those followed by a
        // less indented line are not part of the structure after it.
        let mut trailing = 0;
        while lines.last().is_some_and(|l| l.trim().is_empty()) {
            lines.pop();
            trailing += 1;
        }
        let mut out = if literal {
            lines.join("\n")
        } else {
            fold(&lines)
        };
        if !lines.is_empty() && !strip {
            out.push('\n');
        }
        if keep {
            out.push_str(&"\n".repeat(trailing));
        }
        Ok(out)
    }
}

const STD_TAGS: &[&str] = &[
    "!!str", "!!int", "!!float", "!!bool", "!!null", "!!map", "!!seq", "!!binary", "!",
];

/// Folding of a `>` block: single line breaks between text lines become
/// spaces; blank lines and more-indented lines keep their breaks.
fn fold(lines: &[String]) -> String {
    let mut out = String::new();
    let mut prev_more: Option<bool> = None;
    let mut empties = 0;
    for l in lines {
        if l.trim().is_empty() && !l.starts_with(' ') {
            empties += 1;
            continue;
        }
        let more = l.starts_with([' ', '\t']);
        match prev_more {
            None => out.push_str(&"\n".repeat(empties)),
            Some(false) if !more && empties == 0 => out.push(' '),
            Some(false) if !more => out.push_str(&"\n".repeat(empties)),
            Some(_) => out.push_str(&"\n".repeat(empties + 1)),
        }
        out.push_str(l);
        empties = 0;
        prev_more = Some(more);
    }
    out
}

/// Splits `key: rest` (None when the line is not a mapping entry); the
/// flag is true for a plain (unquoted) key.
fn split_key(t: &str, no: usize) -> Result<Option<(String, bool, String)>, String> {
    if t.starts_with("? ") || t == "?" {
        return Err(err(no, "explicit '?' keys are not supported"));
    }
    if t.starts_with(['"', '\'']) {
        let mut f = Flow::new(t, no);
        let Ok(Value::String(key)) = f.quoted() else {
            return Ok(None);
        };
        let after = f.rest();
        return Ok(after
            .trim_start()
            .strip_prefix(':')
            .filter(|r| r.is_empty() || r.starts_with([' ', '\t']))
            .map(|r| (key, false, r.to_string())));
    }
    if t.starts_with(['[', '{', '#', '|', '>', '&', '*', '!']) {
        return Ok(None);
    }
    let end = comment_start(t).unwrap_or(t.len());
    let b = t.as_bytes();
    for i in 0..end {
        if b[i] == b':' && (i + 1 == b.len() || b[i + 1] == b' ' || b[i + 1] == b'\t') {
            let key = t[..i].trim_end();
            if key.is_empty() {
                return Err(err(no, "did not find expected key"));
            }
            return Ok(Some((plain_key(key), true, t[i + 1..].to_string())));
        }
    }
    Ok(None)
}

/// A plain key as sigs.k8s.io/yaml writes it into JSON (booleans as `true`/`false`).
fn plain_key(k: &str) -> String {
    match resolve(k) {
        Ok(Value::Bool(b)) => b.to_string(),
        _ => k.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn manifests() {
        let y = "# a deployment\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web  # trailing\n  labels: {app: web, tier: \"front end\"}\nspec:\n  replicas: 2\n  template:\n    spec:\n      containers:\n      - name: nginx\n        image: nginx:1.27\n        args: [\"-c\", '/etc/x.conf']\n        ports:\n        - containerPort: 80\n          protocol: TCP\n      - name: side\n        image: busybox\n";
        assert_eq!(
            to_json(y).unwrap(),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "web", "labels": {"app": "web", "tier": "front end"}},
                   "spec": {"replicas": 2, "template": {"spec": {"containers": [
                       {"name": "nginx", "image": "nginx:1.27", "args": ["-c", "/etc/x.conf"],
                        "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                       {"name": "side", "image": "busybox"}]}}}})
        );
    }

    #[test]
    fn scalars_as_go_yaml_v2() {
        let y = "a: yes\nb: off\nc: ~\nd: 0755\ne: 0x1F\nf: 1.5e3\ng: \"007\"\nh: '1'\ni: 12345678901234567890\nj: -3\nk: 1_000\nl: .5\nm: text with spaces\nnothing:\no: !!str 123\np: 'it''s'\nq: \"tab\\there\\u00e9\"\n";
        assert_eq!(
            to_json(y).unwrap(),
            json!({"a": true, "b": false, "c": null, "d": 493, "e": 31, "f": 1500.0, "g": "007",
                   "h": "1", "i": 12345678901234567890u64, "j": -3, "k": 1000, "l": 0.5,
                   "m": "text with spaces", "nothing": null, "o": "123", "p": "it's", "q": "tab\there\u{e9}"})
        );
        assert!(to_json("a: .inf").is_err());
    }

    #[test]
    fn block_scalars() {
        let y = "lit: |\n  line 1\n    indented\n\n  line 3\nfold: >-\n  a\n  b\n\n  c\nkeep: |+\n  x\n\nstrip: |-\n  y\nnext: 1\n";
        assert_eq!(
            to_json(y).unwrap(),
            json!({"lit": "line 1\n  indented\n\nline 3\n", "fold": "a b\nc", "keep": "x\n\n", "strip": "y", "next": 1})
        );
        let y = "data:\n  script.sh: |\n    #!/bin/sh\n    echo \"# not a comment\"\n  other: v\n";
        assert_eq!(
            to_json(y).unwrap(),
            json!({"data": {"script.sh": "#!/bin/sh\necho \"# not a comment\"\n", "other": "v"}})
        );
    }

    #[test]
    fn sequences_and_flows() {
        let y = "list:\n- a\n- - b\n  - c\n-\n  k: v\n- {x: [1, 2], w: {z: null}}\n- [\n    p,\n    q\n  ]\nafter: \"multi\n  line\"\n";
        assert_eq!(
            to_json(y).unwrap(),
            json!({"list": ["a", ["b", "c"], {"k": "v"}, {"x": [1, 2], "w": {"z": null}}, ["p", "q"]], "after": "multi line"})
        );
        assert_eq!(to_json("- 1\n- two\n").unwrap(), json!([1, "two"]));
        assert_eq!(
            to_json("on: [cron: \"1 * *\", _1]").unwrap(),
            json!({"true": [{"cron": "1 * *"}, "_1"]})
        );
        assert_eq!(to_json("just text").unwrap(), json!("just text"));
        assert_eq!(to_json("").unwrap(), Value::Null);
    }

    #[test]
    fn anchors_merges_and_documents() {
        let y = "---\nbase: &b {a: 1, b: 2}\nitem:\n  <<: *b\n  b: 3\ncopy: *b\n---\nsecond: doc\n";
        assert_eq!(
            to_json(y).unwrap(),
            json!({"base": {"a": 1, "b": 2}, "item": {"a": 1, "b": 3}, "copy": {"a": 1, "b": 2}})
        );
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            to_json("a: b: c").unwrap_err(),
            "yaml: line 1: mapping values are not allowed in this context"
        );
        assert!(to_json("a: 1\n  b: 2")
            .unwrap_err()
            .starts_with("yaml: line 2:"));
        assert!(to_json("a: [1, 2").is_err());
        assert!(to_json("a: \"open").is_err());
        assert!(to_json("a: *nope").is_err());
        assert!(to_json("? k\n: v").is_err());
        assert!(to_json("a: !custom x").is_err());
        assert!(to_json("a: 1\n- b").is_err());
        assert!(to_json("a:\n\t- b").is_err());
        assert!(
            to_json(&format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)))
                .unwrap_err()
                .contains("max depth")
        );
        let laughs: String = (1..12)
            .map(|i| format!("l{i}: &l{i}\n{}", format!("- *l{}\n", i - 1).repeat(8)))
            .collect();
        let bomb = to_json(&format!("l0: &l0 [x]\n{laughs}")).unwrap_err();
        assert!(bomb.contains("excessive aliasing"), "{bomb}");
        let ok = to_json("a: &a {k: v}\nb:\n- *a\n- *a\n").unwrap();
        assert_eq!(ok["b"], json!([{"k": "v"}, {"k": "v"}]));
        let deep: String = (0..3000)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect();
        assert!(to_json(&deep).unwrap_err().contains("max depth"));
    }
}

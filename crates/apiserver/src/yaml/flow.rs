//! Flow nodes (`[a, b]`, `{k: v}`), quoted scalars and the resolution of
//! plain scalars to JSON types, for [`super::to_json`].

use serde_json::{Map, Number, Value};

use super::{err, MAX_DEPTH};

/// Finds the end of a quoted scalar or flow collection fed line by line
/// (linear in the input, however many lines it spans).
pub(super) struct FlowScan {
    depth: i32,
    quote: Option<char>,
    escaped: bool,
    comment: bool,
    prev: char,
}

impl FlowScan {
    pub(super) fn new() -> Self {
        FlowScan {
            depth: 0,
            quote: None,
            escaped: false,
            comment: false,
            prev: ' ',
        }
    }

    /// Feeds more text; true once the node the text started with is closed.
    pub(super) fn feed(&mut self, s: &str) -> bool {
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            let closed = match (self.quote, c) {
                _ if self.comment => {
                    self.comment = c != '\n';
                    false
                }
                (Some('"'), _) if self.escaped => {
                    self.escaped = false;
                    false
                }
                (Some('"'), '\\') => {
                    self.escaped = true;
                    false
                }
                (Some('\''), '\'') if chars.peek() == Some(&'\'') => {
                    chars.next();
                    false
                }
                (Some(q), c) if c == q => {
                    self.quote = None;
                    self.depth <= 0
                }
                (Some(_), _) => false,
                (None, '"' | '\'')
                    if matches!(self.prev, ' ' | '\t' | '\n' | '[' | '{' | ',' | ':') =>
                {
                    self.quote = Some(c);
                    false
                }
                (None, '#') if matches!(self.prev, ' ' | '\t' | '\n') => {
                    self.comment = true;
                    false
                }
                (None, '[' | '{') => {
                    self.depth += 1;
                    false
                }
                (None, ']' | '}') => {
                    self.depth -= 1;
                    self.depth <= 0
                }
                _ => false,
            };
            if closed {
                return true;
            }
            self.prev = c;
        }
        false
    }
}

/// A flow mapping key as a JSON key.
fn flow_key(v: Value) -> String {
    match v {
        Value::String(s) => s,
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

/// Parser of flow nodes and quoted scalars.
pub(super) struct Flow {
    s: Vec<char>,
    i: usize,
    no: usize,
    /// Nesting so far (starts at the enclosing block node's).
    pub(super) depth: usize,
}

impl Flow {
    pub(super) fn new(s: &str, no: usize) -> Self {
        Flow {
            s: s.chars().collect(),
            i: 0,
            no,
            depth: 0,
        }
    }

    fn err(&self, msg: &str) -> String {
        let line = self.no
            + self.s[..self.i.min(self.s.len())]
                .iter()
                .filter(|c| **c == '\n')
                .count();
        err(line, msg)
    }

    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    pub(super) fn rest(&self) -> String {
        self.s[self.i..].iter().collect()
    }

    fn ws(&mut self) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\n' | '\r' => self.i += 1,
                '#' if self.i == 0 || matches!(self.s[self.i - 1], ' ' | '\t' | '\n') => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.i += 1;
                    }
                }
                _ => return,
            }
        }
    }

    /// Only whitespace and a comment may follow the node.
    pub(super) fn end(&mut self) -> Result<(), String> {
        self.ws();
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.err("did not find expected <document end> or key")),
        }
    }

    pub(super) fn value(&mut self) -> Result<Value, String> {
        if self.depth >= MAX_DEPTH {
            return Err(self.err("exceeded max depth of 128"));
        }
        self.depth += 1;
        let v = self.value_inner();
        self.depth -= 1;
        v
    }

    fn value_inner(&mut self) -> Result<Value, String> {
        self.ws();
        match self.peek() {
            Some('[') => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.ws();
                    if self.peek() == Some(']') {
                        self.i += 1;
                        return Ok(Value::Array(items));
                    }
                    let item = self.value()?;
                    self.ws();
                    if self.peek() == Some(':') {
                        // `[key: value]`: a single-pair mapping.
                        self.i += 1;
                        let v = self.value()?;
                        self.ws();
                        let mut m = Map::new();
                        m.insert(flow_key(item), v);
                        items.push(Value::Object(m));
                    } else {
                        items.push(item);
                    }
                    match self.peek() {
                        Some(',') => self.i += 1,
                        Some(']') => {}
                        _ => return Err(self.err("did not find expected ',' or ']'")),
                    }
                }
            }
            Some('{') => {
                self.i += 1;
                let mut m = Map::new();
                loop {
                    self.ws();
                    if self.peek() == Some('}') {
                        self.i += 1;
                        return Ok(Value::Object(m));
                    }
                    let key = flow_key(self.value()?);
                    self.ws();
                    let v = if self.peek() == Some(':') {
                        self.i += 1;
                        self.ws();
                        if matches!(self.peek(), Some(',' | '}')) {
                            Value::Null
                        } else {
                            self.value()?
                        }
                    } else {
                        Value::Null
                    };
                    m.insert(key, v);
                    self.ws();
                    match self.peek() {
                        Some(',') => self.i += 1,
                        Some('}') => {}
                        _ => return Err(self.err("did not find expected ',' or '}'")),
                    }
                }
            }
            Some('"' | '\'') => self.quoted(),
            Some('&' | '*' | '!') => {
                Err(self.err("anchors, aliases and tags inside flow collections are not supported"))
            }
            Some(_) => {
                let start = self.i;
                while let Some(c) = self.peek() {
                    let next = self.s.get(self.i + 1).copied();
                    let ends = matches!(c, ',' | '[' | ']' | '{' | '}')
                        || (c == ':'
                            && matches!(next, None | Some(' ' | '\t' | '\n' | ',' | ']' | '}')))
                        || (c == '#'
                            && matches!(
                                self.s.get(self.i.wrapping_sub(1)),
                                Some(' ' | '\t' | '\n')
                            ));
                    if ends {
                        break;
                    }
                    self.i += 1;
                }
                let text: String = self.s[start..self.i].iter().collect();
                let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                resolve(&text).map_err(|m| self.err(&m))
            }
            None => Err(self.err("did not find expected node content")),
        }
    }

    /// A single- or double-quoted scalar (with line folding and escapes).
    pub(super) fn quoted(&mut self) -> Result<Value, String> {
        let q = self.peek().unwrap_or('"');
        self.i += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err("found unexpected end of stream"));
            };
            self.i += 1;
            match c {
                '\'' if q == '\'' => {
                    if self.peek() == Some('\'') {
                        self.i += 1;
                        out.push('\'');
                    } else {
                        return Ok(Value::String(out));
                    }
                }
                '"' if q == '"' => return Ok(Value::String(out)),
                '\\' if q == '"' => {
                    let Some(e) = self.peek() else {
                        return Err(self.err("found unexpected end of stream"));
                    };
                    self.i += 1;
                    match e {
                        '\n' => {
                            while matches!(self.peek(), Some(' ' | '\t')) {
                                self.i += 1;
                            }
                        }
                        'x' | 'u' | 'U' => {
                            let n = match e {
                                'x' => 2,
                                'u' => 4,
                                _ => 8,
                            };
                            let hex: String = self.s.iter().skip(self.i).take(n).collect();
                            let ch = u32::from_str_radix(&hex, 16)
                                .ok()
                                .filter(|_| hex.len() == n)
                                .and_then(char::from_u32)
                                .ok_or_else(|| self.err("found invalid escape sequence"))?;
                            self.i += n;
                            out.push(ch);
                        }
                        _ => out.push(match e {
                            '0' => '\0',
                            'a' => '\u{7}',
                            'b' => '\u{8}',
                            't' | '\t' => '\t',
                            'n' => '\n',
                            'v' => '\u{b}',
                            'f' => '\u{c}',
                            'r' => '\r',
                            'e' => '\u{1b}',
                            ' ' => ' ',
                            '"' => '"',
                            '/' => '/',
                            '\\' => '\\',
                            'N' => '\u{85}',
                            '_' => '\u{a0}',
                            'L' => '\u{2028}',
                            'P' => '\u{2029}',
                            _ => return Err(self.err("found unknown escape character")),
                        }),
                    }
                }
                '\n' => {
                    // Line folding: trailing spaces go, one break is a space,
                    // each further (empty) line is a newline.
                    while out.ends_with([' ', '\t']) {
                        out.pop();
                    }
                    let mut breaks = 0;
                    loop {
                        while matches!(self.peek(), Some(' ' | '\t')) {
                            self.i += 1;
                        }
                        if self.peek() == Some('\n') {
                            self.i += 1;
                            breaks += 1;
                        } else {
                            break;
                        }
                    }
                    out.push_str(&if breaks == 0 {
                        " ".to_string()
                    } else {
                        "\n".repeat(breaks)
                    });
                }
                c => out.push(c),
            }
        }
    }
}

/// Resolves a plain scalar as go-yaml v2 does (YAML 1.1 core types).
pub(super) fn resolve(s: &str) -> Result<Value, String> {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Value::Null),
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => {
            return Ok(Value::Bool(true))
        }
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => {
            return Ok(Value::Bool(false))
        }
        _ => {}
    }
    let lower = s.to_ascii_lowercase();
    if matches!(lower.trim_start_matches(['+', '-']), ".inf" | ".nan") {
        return Err(format!("{s} cannot be represented in JSON"));
    }
    let (neg, digits) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.starts_with('_') || digits.ends_with('_') {
        return Ok(Value::String(s.to_string()));
    }
    let clean = digits.replace('_', "");
    let radix = if let Some(h) = clean.strip_prefix("0x") {
        Some((h.to_string(), 16))
    } else if let Some(b) = clean.strip_prefix("0b") {
        Some((b.to_string(), 2))
    } else if clean.len() > 1 && clean.starts_with('0') && clean.bytes().all(|c| c.is_ascii_digit())
    {
        Some((clean[1..].to_string(), 8))
    } else if !clean.is_empty() && clean.bytes().all(|c| c.is_ascii_digit()) {
        Some((clean.clone(), 10))
    } else {
        None
    };
    if let Some((body, radix)) = radix {
        if let Ok(n) = i128::from_str_radix(&body, radix) {
            let n = if neg { -n } else { n };
            if let Ok(v) = i64::try_from(n) {
                return Ok(Value::from(v));
            }
            if let Ok(v) = u64::try_from(n) {
                return Ok(Value::from(v));
            }
        }
        if radix != 10 && radix != 8 {
            return Ok(Value::String(s.to_string()));
        }
    }
    let is_float = !clean.is_empty()
        && clean.bytes().any(|c| c.is_ascii_digit())
        && clean
            .bytes()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
        && clean.bytes().filter(|c| *c == b'.').count() <= 1
        && (clean.starts_with(|c: char| c.is_ascii_digit()) || clean.starts_with('.'));
    if is_float {
        if let Ok(f) = clean.parse::<f64>() {
            let f = if neg { -f } else { f };
            if let Some(n) = Number::from_f64(f) {
                return Ok(Value::Number(n));
            }
        }
    }
    Ok(Value::String(s.to_string()))
}

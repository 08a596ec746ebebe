//! LVM2's text metadata syntax (the "config" format of `vgcfgbackup` and
//! the metadata area): `key = value` and `name { … }` sections, values are
//! strings (`"…"` with `\` escapes), integers, floats and `[ … ]` arrays of
//! them, `#` comments to the end of the line. Bounded: nesting depth, text
//! length and item count are capped, so hostile text cannot exhaust memory
//! or recursion.

use crate::guest::FsError;

/// The text this parser accepts at most (LVM's default metadata area is 1 MiB).
pub const MAX_TEXT: usize = 4 << 20;
/// Section nesting depth (LVM's own is 4: vg / logical_volumes / lv / segment).
const MAX_DEPTH: usize = 16;
/// Items (keys, sections, array elements) in one text.
const MAX_ITEMS: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Array(Vec<Value>),
    Section(Section),
}

/// A section's items in text order (names may repeat; lookups take the first).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Section {
    pub items: Vec<(String, Value)>,
}

impl Section {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.items.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn section(&self, key: &str) -> Option<&Section> {
        match self.get(key) {
            Some(Value::Section(s)) => Some(s),
            _ => None,
        }
    }
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key) {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        }
    }
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }
    pub fn array(&self, key: &str) -> Option<&[Value]> {
        match self.get(key) {
            Some(Value::Array(a)) => Some(a),
            _ => None,
        }
    }
    /// The sub-sections, in text order.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Section)> {
        self.items.iter().filter_map(|(k, v)| match v {
            Value::Section(s) => Some((k.as_str(), s)),
            _ => None,
        })
    }
}

/// Parses one metadata text into its top-level section.
pub fn parse(text: &[u8]) -> Result<Section, FsError> {
    if text.len() > MAX_TEXT {
        return Err(malformed(0, &format!("{} bytes of text, more than {MAX_TEXT}", text.len())));
    }
    let mut p = Parser { s: text, at: 0, items: 0 };
    let top = p.items(0)?;
    p.skip_space();
    if p.at != p.s.len() {
        return Err(malformed(p.at, "unexpected '}'"));
    }
    Ok(top)
}

fn malformed(at: usize, what: &str) -> FsError {
    FsError::Malformed(format!("LVM2 metadata text at byte {at}: {what}"))
}

struct Parser<'t> {
    s: &'t [u8],
    at: usize,
    items: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek() {
            if c == b'#' {
                while self.peek().is_some_and(|c| c != b'\n') {
                    self.at += 1;
                }
            } else if c.is_ascii_whitespace() || c == 0 {
                // NULs pad the text in some writers' buffers.
                self.at += 1;
            } else {
                break;
            }
        }
    }

    fn count(&mut self) -> Result<(), FsError> {
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(malformed(self.at, &format!("more than {MAX_ITEMS} items")));
        }
        Ok(())
    }

    /// Items up to a `}` (depth > 0) or the end of the text (depth 0).
    fn items(&mut self, depth: usize) -> Result<Section, FsError> {
        if depth > MAX_DEPTH {
            return Err(malformed(self.at, &format!("sections nested deeper than {MAX_DEPTH}")));
        }
        let mut section = Section::default();
        loop {
            self.skip_space();
            match self.peek() {
                None if depth == 0 => return Ok(section),
                None => return Err(malformed(self.at, "text ends inside a section")),
                Some(b'}') if depth > 0 => {
                    self.at += 1;
                    return Ok(section);
                }
                Some(b'}') => return Ok(section),
                Some(_) => {}
            }
            let key = self.identifier()?;
            self.count()?;
            self.skip_space();
            match self.peek() {
                Some(b'{') => {
                    self.at += 1;
                    let sub = self.items(depth + 1)?;
                    section.items.push((key, Value::Section(sub)));
                }
                Some(b'=') => {
                    self.at += 1;
                    self.skip_space();
                    let value = self.value(depth)?;
                    section.items.push((key, value));
                }
                _ => return Err(malformed(self.at, &format!("expected '=' or '{{' after \"{key}\""))),
            }
        }
    }

    fn identifier(&mut self) -> Result<String, FsError> {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'+' | b'/')) {
            self.at += 1;
        }
        if self.at == start {
            return Err(malformed(self.at, "expected a name"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    fn value(&mut self, depth: usize) -> Result<Value, FsError> {
        match self.peek() {
            Some(b'"') => self.string().map(Value::Str),
            Some(b'[') => {
                if depth + 1 > MAX_DEPTH {
                    return Err(malformed(self.at, "arrays nested too deep"));
                }
                self.at += 1;
                let mut elems = Vec::new();
                loop {
                    self.skip_space();
                    match self.peek() {
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Value::Array(elems));
                        }
                        None => return Err(malformed(self.at, "text ends inside an array")),
                        _ => {}
                    }
                    self.count()?;
                    elems.push(self.value(depth + 1)?);
                    self.skip_space();
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(b']') => {}
                        _ => return Err(malformed(self.at, "expected ',' or ']' in an array")),
                    }
                }
            }
            Some(c) if c.is_ascii_digit() || c == b'-' || c == b'+' => self.number(),
            _ => Err(malformed(self.at, "expected a value")),
        }
    }

    fn string(&mut self) -> Result<String, FsError> {
        let start = self.at;
        self.at += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(malformed(start, "unterminated string")),
                Some(b'"') => {
                    self.at += 1;
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                Some(b'\\') => {
                    self.at += 1;
                    match self.peek() {
                        Some(c) => {
                            out.push(c);
                            self.at += 1;
                        }
                        None => return Err(malformed(start, "unterminated string")),
                    }
                }
                Some(c) => {
                    out.push(c);
                    self.at += 1;
                }
            }
        }
    }

    fn number(&mut self) -> Result<Value, FsError> {
        let start = self.at;
        self.at += 1;
        while self.peek().is_some_and(|c| c.is_ascii_digit() || c == b'.') {
            self.at += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.at]).unwrap_or("");
        if text.contains('.') {
            return text.parse().map(Value::Float).map_err(|_| malformed(start, &format!("bad number {text:?}")));
        }
        text.parse().map(Value::Int).map_err(|_| malformed(start, &format!("bad integer {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_values_comments() {
        let t = br#"# c
vg0 {
    id = "abc"
    extent_size = 8192 # sectors
    status = ["READ", "WRITE"]
    f = 1.5
    physical_volumes { pv0 { pe_start = 2048 } }
    s = "q\"x"
}
contents = "Text"
"#;
        let top = parse(t).unwrap();
        let vg = top.section("vg0").unwrap();
        assert_eq!(vg.str("id"), Some("abc"));
        assert_eq!(vg.int("extent_size"), Some(8192));
        assert_eq!(vg.array("status").unwrap().len(), 2);
        assert_eq!(vg.get("f"), Some(&Value::Float(1.5)));
        assert_eq!(vg.section("physical_volumes").unwrap().section("pv0").unwrap().int("pe_start"), Some(2048));
        assert_eq!(vg.str("s"), Some("q\"x"));
        assert_eq!(top.str("contents"), Some("Text"));
    }

    #[test]
    fn hostile_text_is_an_error() {
        for t in [&b"a {"[..], b"a = ", b"a = [1, 2", b"a = \"x", b"}", b"a = 99999999999999999999", b"= 1", b"a b"] {
            assert!(parse(t).is_err(), "{:?}", String::from_utf8_lossy(t));
        }
        let deep = "a {".repeat(100) + &"}".repeat(100);
        assert!(parse(deep.as_bytes()).unwrap_err().to_string().contains("nested deeper"));
        let deep_array = "a = ".to_string() + &"[".repeat(100_000);
        assert!(parse(deep_array.as_bytes()).is_err());
    }
}

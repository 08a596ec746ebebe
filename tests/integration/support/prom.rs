//! A strict parser of the Prometheus text exposition format (version 0.0.4), written from the
//! format's specification and independent of `imgarc::metrics`: the oracle the operator tests read
//! metrics files with. It rejects what a scraper would (bad names, escapes, values, a family's
//! samples split apart or a TYPE after them, duplicate HELP/TYPE lines or series).

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Family name -> its TYPE.
    pub types: HashMap<String, String>,
    /// Family name -> its HELP text (unescaped).
    pub help: HashMap<String, String>,
}

impl Exposition {
    /// The value of the one sample `name` with exactly these labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.iter().find(|s| s.name == name && s.labels == want).map(|s| s.value)
    }
}

fn metric_name_ok(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn label_name_ok(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
        && !n.starts_with("__")
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ if v.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) && !v.is_empty() => {
            v.parse::<f64>().map_err(|e| format!("value {v:?}: {e}"))
        }
        _ => Err(format!("value {v:?} is not a float")),
    }
}

/// The family a sample belongs to (summaries and histograms add suffixes; gauges do not).
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if matches!(types.get(base).map(String::as_str), Some("histogram" | "summary")) {
                return base;
            }
        }
    }
    name
}

pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the last line does not end with a newline".into());
    }
    let mut seen_samples_of: Vec<String> = Vec::new();
    let mut series = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", i + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start_matches([' ', '\t']);
            let mut parts = rest.splitn(3, [' ', '\t']);
            match parts.next() {
                Some("HELP") => {
                    let name = parts.next().ok_or_else(|| err("HELP without a name".into()))?;
                    if !metric_name_ok(name) {
                        return Err(err(format!("bad metric name {name:?}")));
                    }
                    let doc = parts.next().unwrap_or("");
                    let mut unescaped = String::new();
                    let mut chars = doc.chars();
                    while let Some(c) = chars.next() {
                        if c == '\\' {
                            match chars.next() {
                                Some('\\') => unescaped.push('\\'),
                                Some('n') => unescaped.push('\n'),
                                other => return Err(err(format!("bad escape \\{other:?} in HELP"))),
                            }
                        } else {
                            unescaped.push(c);
                        }
                    }
                    if out.help.insert(name.to_string(), unescaped).is_some() {
                        return Err(err(format!("second HELP for {name}")));
                    }
                }
                Some("TYPE") => {
                    let name = parts.next().ok_or_else(|| err("TYPE without a name".into()))?;
                    let kind = parts.next().ok_or_else(|| err("TYPE without a type".into()))?.trim();
                    if !metric_name_ok(name) {
                        return Err(err(format!("bad metric name {name:?}")));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(err(format!("unknown type {kind:?}")));
                    }
                    if seen_samples_of.iter().any(|f| f == name) {
                        return Err(err(format!("TYPE for {name} after its samples")));
                    }
                    if out.types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(err(format!("second TYPE for {name}")));
                    }
                }
                _ => {} // any other comment
            }
            continue;
        }
        // name [ { labels } ] value [ timestamp ]
        let name_end = line.find(['{', ' ', '\t']).ok_or_else(|| err("a sample without a value".into()))?;
        let name = &line[..name_end];
        if !metric_name_ok(name) {
            return Err(err(format!("bad metric name {name:?}")));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end;
            loop {
                while chars.peek().is_some_and(|(_, c)| *c == ' ') {
                    chars.next();
                }
                if let Some(&(j, '}')) = chars.peek() {
                    end = j;
                    break;
                }
                let mut lname = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c == '=' || c == ' ' {
                        break;
                    }
                    lname.push(c);
                    chars.next();
                }
                if !label_name_ok(&lname) {
                    return Err(err(format!("bad label name {lname:?}")));
                }
                if chars.next().map(|(_, c)| c) != Some('=') || chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(err(format!("label {lname} is not name=\"value\"")));
                }
                let mut value = String::new();
                loop {
                    match chars.next().map(|(_, c)| c) {
                        None => return Err(err("unterminated label value".into())),
                        Some('"') => break,
                        Some('\\') => match chars.next().map(|(_, c)| c) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => return Err(err(format!("bad escape \\{other:?} in a label value"))),
                        },
                        Some('\n') => return Err(err("raw newline in a label value".into())),
                        Some(c) => value.push(c),
                    }
                }
                if labels.insert(lname.clone(), value).is_some() {
                    return Err(err(format!("label {lname} twice")));
                }
                match chars.next() {
                    Some((_, ',')) => continue,
                    Some((j, '}')) => {
                        end = j;
                        break;
                    }
                    other => return Err(err(format!("expected , or }} after a label, found {other:?}"))),
                }
            }
            rest = &body[end + 1..];
        }
        let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
        let value = parse_value(fields.next().ok_or_else(|| err("no value".into()))?).map_err(err)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| err(format!("timestamp {ts:?} is not an integer")))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing text after the sample".into()));
        }
        let family = family_of(name, &out.types).to_string();
        match seen_samples_of.iter().position(|f| *f == family) {
            Some(p) if p + 1 != seen_samples_of.len() => return Err(err(format!("samples of {family} are not together"))),
            Some(_) => {}
            None => seen_samples_of.push(family),
        }
        if !series.insert((name.to_string(), labels.clone())) {
            return Err(err(format!("series {name}{labels:?} twice")));
        }
        out.samples.push(Sample { name: name.to_string(), labels, value });
    }
    Ok(out)
}

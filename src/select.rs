//! The one snapshot selector of every verb that picks snapshots out of the
//! repository (list, forget; copy and drill): `--name GLOB`, `--tag T`,
//! `--image ID`, `--latest N` and positional snapshot ids, matched over the
//! index cache's snapshot rows (and their heads, which every key reads, for
//! the source image). Also owns the crate's shell-style glob.
//!
//! Rules (documented in `--help` through the doc comments below):
//! * `--name` is a glob (`*`, `?`, `[abc]`, `[a-z]`, `[!a]`); a name that is
//!   exactly the pattern always matches, so a plain name (even one holding
//!   glob characters) selects what it selected before globs existed.
//! * `--tag a,b` needs both tags; repeated `--tag` takes either (restic's
//!   rule); `--tag ""` selects snapshots without tags.
//! * `--image` is a Glance image id, or a unique prefix of at least 8
//!   characters of one the repository holds.
//! * `--latest N` keeps the newest N of each group (Glance image id, else
//!   name) after the other criteria.
//! * Positional ids (full or a unique prefix of at least 8 hex digits) narrow
//!   the selection to those snapshots.

use crate::ids::Id;
use crate::index::{Index, SnapshotRow};
use crate::repository::snapshot::Source;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Which snapshots a verb works on. Every field narrows; none given selects all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct SnapshotSelector {
    /// Only snapshots whose name matches this glob (`*`, `?`, `[a-z]`); a plain name matches exactly
    #[cfg_attr(feature = "clap", arg(long, value_name = "GLOB"))]
    pub name: Option<String>,
    /// Only snapshots with these tags: `--tag a,b` needs both, a repeated --tag takes either; `--tag ''` selects untagged ones
    #[cfg_attr(feature = "clap", arg(long = "tag", id = "select_tags", value_name = "T[,T...]"))]
    pub tags: Vec<String>,
    /// Only snapshots of this Glance image id (or a unique prefix of at least 8 characters)
    #[cfg_attr(feature = "clap", arg(long, value_name = "ID"))]
    pub image: Option<String>,
    /// Only the newest N snapshots of each image (Glance image id, else name), after the other criteria
    #[cfg_attr(feature = "clap", arg(long, value_name = "N", value_parser = parse_latest))]
    pub latest: Option<usize>,
}

/// `--latest` takes a count of at least 1 ([`parse_count`]).
#[cfg(feature = "clap")]
fn parse_latest(s: &str) -> std::result::Result<usize, String> {
    parse_count("--latest", s)
}

/// A count flag's value (`--latest`, drill's `--sample`): N >= 1, since 0 would select
/// nothing, surely not what was meant.
pub fn parse_count(flag: &str, s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err(format!("{flag} 0 would select nothing; give N >= 1")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a count (N >= 1)")),
    }
}

/// The group `--latest` counts in, and `forget --group-by image` applies the
/// policy in: the Glance image id, else the name.
pub fn image_group(source: &Source, name: &str) -> String {
    match source {
        Source::Glance { image_id, .. } => group_of(Some(image_id), name),
        // One group per volume: its nightly archives are one lineage.
        Source::Cinder { volume_id, .. } => format!("volume {volume_id}"),
        _ => group_of(None, name),
    }
}

/// The group of a snapshot archived from Glance image `image_id` (else none) under `name`:
/// what [`image_group`] returns, for a caller that holds the two fields (a drill record).
pub fn group_of(image_id: Option<&str>, name: &str) -> String {
    match image_id {
        Some(image_id) => format!("image {image_id}"),
        None => format!("name {name}"),
    }
}

/// The shortest prefix of an image id `--image` accepts (Glance ids are UUIDs).
const MIN_IMAGE_PREFIX: usize = 8;

impl SnapshotSelector {
    /// True when nothing narrows: every snapshot is selected.
    pub fn is_empty(&self) -> bool {
        *self == SnapshotSelector::default()
    }

    /// Refuses a selector no snapshot could match for a reason the user
    /// should hear about (an empty `--name`, a malformed tag list).
    pub fn validate(&self) -> Result<()> {
        if self.name.as_deref() == Some("") {
            bail!("--name '': give a snapshot name or a glob (`*` for all)");
        }
        if self.latest == Some(0) {
            bail!("--latest 0 would select nothing; give N >= 1");
        }
        if let Some(i) = &self.image {
            if i.trim().is_empty() {
                bail!("--image '': give a Glance image id");
            }
        }
        Ok(())
    }

    fn matches_name(&self, name: &str) -> bool {
        self.name.as_deref().is_none_or(|p| name_matches(p, name))
    }

    fn matches_tags(&self, tags: &[String]) -> bool {
        if self.tags.is_empty() {
            return true;
        }
        self.tags.iter().any(|set| {
            let want: Vec<&str> = set.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
            if want.is_empty() {
                tags.is_empty()
            } else {
                want.iter().all(|w| tags.iter().any(|t| t == w))
            }
        })
    }

    /// The selected rows, oldest first (the index's order: time, then id).
    /// `ids` (full ids or unique prefixes) narrow to those snapshots; an id
    /// the repository does not hold is an error, not an empty selection.
    pub fn select(&self, index: &Index, ids: &[String]) -> Result<Vec<SnapshotRow>> {
        self.validate()?;
        let named: Option<HashSet<Id>> =
            if ids.is_empty() { None } else { Some(ids.iter().map(|s| index.resolve_snapshot(s)).collect::<Result<_>>()?) };
        let rows = index.snapshot_rows()?;
        // The source image is only in the head: read heads only when a criterion needs it.
        let needs_source = self.image.is_some() || self.latest.is_some();
        let mut sources: HashMap<Id, Source> = HashMap::new();
        if needs_source {
            for r in &rows {
                let head = index.snapshot_head(&r.id)?.with_context(|| format!("snapshot {} vanished from the index", r.id.short()))?;
                sources.insert(r.id, head.source);
            }
        }
        let image = match &self.image {
            Some(want) => Some(resolve_image(want, sources.values())?),
            None => None,
        };
        let mut picked: Vec<SnapshotRow> = rows
            .into_iter()
            .filter(|r| named.as_ref().is_none_or(|n| n.contains(&r.id)))
            .filter(|r| self.matches_name(&r.name) && self.matches_tags(&r.tags))
            .filter(|r| match (&image, sources.get(&r.id)) {
                (None, _) => true,
                (Some(want), Some(Source::Glance { image_id, .. })) => image_id == want,
                (Some(_), _) => false,
            })
            .collect();
        if let Some(n) = self.latest {
            // Rows are oldest first, so walking backwards meets each group's newest first.
            let mut seen: HashMap<String, usize> = HashMap::new();
            let mut keep: HashSet<Id> = HashSet::new();
            for r in picked.iter().rev() {
                let group = sources.get(&r.id).map(|s| image_group(s, &r.name)).unwrap_or_else(|| format!("name {}", r.name));
                let count = seen.entry(group).or_default();
                if *count < n {
                    *count += 1;
                    keep.insert(r.id);
                }
            }
            picked.retain(|r| keep.contains(&r.id));
        }
        Ok(picked)
    }
}

/// `--image WANT`: an image id the repository holds, else the one id it is a
/// prefix of. An id the repository does not hold selects nothing (it is not
/// an error: the image may simply not be archived yet).
fn resolve_image<'a>(want: &str, sources: impl Iterator<Item = &'a Source>) -> Result<String> {
    let want = want.trim();
    let held: BTreeSet<&str> = sources
        .filter_map(|s| match s {
            Source::Glance { image_id, .. } => Some(image_id.as_str()),
            _ => None,
        })
        .collect();
    if held.contains(want) || want.len() < MIN_IMAGE_PREFIX {
        return Ok(want.to_string());
    }
    let matches: Vec<&str> = held.iter().copied().filter(|id| id.starts_with(want)).collect();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Ok(want.to_string()),
        many => bail!("--image {want}: the prefix is ambiguous, {} images match ({})", many.len(), many.join(", ")),
    }
}

/// A name pattern as every `--name`/`name=` takes it: the name itself, or a
/// glob matching it, so a name that holds glob characters still selects
/// itself as it did before patterns were globs.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    pattern == name || glob_match(pattern, name)
}

/// Shell-style glob: `*` matches any run of characters, `?` exactly one,
/// `[abc]`/`[a-z]` one of a set and `[!…]`/`[^…]` one not in it. A `[`
/// without its closing `]` is an ordinary character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it currently stands for.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => None,
            Some('?') => Some(1),
            Some('[') => match class_match(&p[pi..], t[ti]) {
                Some((true, len)) => Some(len),
                Some((false, _)) => Some(0),
                None => (t[ti] == '[').then_some(1).or(Some(0)),
            },
            Some(c) => Some(if *c == t[ti] { 1 } else { 0 }),
            None => Some(0),
        };
        match step {
            None => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(len) if len > 0 => {
                pi += len;
                ti += 1;
            }
            Some(_) => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A `[...]` class at the start of `p` tested against `c`: whether it
/// matches and the class's length in pattern characters; `None` when the
/// `[` is not closed (then it is a literal).
fn class_match(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negated = matches!(p.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let start = i;
    let mut hit = false;
    loop {
        let ch = *p.get(i)?;
        // A `]` right after the opening (or its `!`) is a member, not the end.
        if ch == ']' && i > start {
            return Some((hit != negated, i + 1));
        }
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|e| *e != ']') {
            let end = p[i + 2];
            hit |= ch <= c && c <= end;
            i += 3;
        } else {
            hit |= ch == c;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_classes() {
        assert!(glob_match("web-0[12]", "web-01") && glob_match("web-0[12]", "web-02") && !glob_match("web-0[12]", "web-03"));
        assert!(glob_match("db[0-9]", "db7") && !glob_match("db[0-9]", "dbx"));
        assert!(glob_match("db[!0-9]", "dbx") && !glob_match("db[!0-9]", "db7"));
        assert!(glob_match("db[^0-9]*", "dbx-1"));
        assert!(glob_match("[]x]", "]") && glob_match("[]x]", "x"));
        assert!(glob_match("a[-]b", "a-b") && glob_match("[a-]", "-"));
        // An unclosed class is literal text.
        assert!(glob_match("web[1", "web[1") && !glob_match("web[1", "web1"));
        assert!(glob_match("*[0-9]", "vm-3") && !glob_match("*[0-9]", "vm-x"));
        assert!(glob_match("*-[ab]-*", "x-a-b-c"));
    }

    #[test]
    fn a_plain_name_matches_exactly_even_with_glob_characters() {
        let s = SnapshotSelector { name: Some("vm[1]".into()), ..Default::default() };
        assert!(s.matches_name("vm[1]"), "the exact name still matches");
        assert!(s.matches_name("vm1"), "and as a glob it also matches vm1");
        assert!(!s.matches_name("vm[1]x"));
        let plain = SnapshotSelector { name: Some("web".into()), ..Default::default() };
        assert!(plain.matches_name("web") && !plain.matches_name("web-01"));
    }

    #[test]
    fn tags_comma_is_and_repeated_is_or() {
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let s = SnapshotSelector { tags: t(&["a,b"]), ..Default::default() };
        assert!(s.matches_tags(&t(&["a", "b", "c"])) && !s.matches_tags(&t(&["a"])));
        let s = SnapshotSelector { tags: t(&["a", "b"]), ..Default::default() };
        assert!(s.matches_tags(&t(&["a"])) && s.matches_tags(&t(&["b"])) && !s.matches_tags(&t(&["c"])));
        let untagged = SnapshotSelector { tags: t(&[""]), ..Default::default() };
        assert!(untagged.matches_tags(&[]) && !untagged.matches_tags(&t(&["a"])));
        assert!(SnapshotSelector::default().matches_tags(&t(&["x"])));
    }

    #[test]
    fn image_prefixes() {
        let src = |id: &str| Source::Glance { image_id: id.into(), cloud: None };
        let held = [src("0f3e9c1a-1111-4000-8000-000000000001"), src("0f3e9c1a-2222-4000-8000-000000000002"), Source::Stdin];
        let full = "0f3e9c1a-1111-4000-8000-000000000001";
        assert_eq!(resolve_image(full, held.iter()).unwrap(), full);
        assert_eq!(resolve_image("0f3e9c1a-11", held.iter()).unwrap(), full);
        let e = resolve_image("0f3e9c1a", held.iter()).unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains("2 images"), "{e}");
        // Too short to be a prefix, or not held: taken as it is (it selects nothing).
        assert_eq!(resolve_image("0f3e", held.iter()).unwrap(), "0f3e");
        assert_eq!(resolve_image("ffffffff-0000", held.iter()).unwrap(), "ffffffff-0000");
    }

    #[test]
    fn validation_names_the_flag() {
        let e = SnapshotSelector { name: Some(String::new()), ..Default::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("--name"), "{e}");
        let e = SnapshotSelector { latest: Some(0), ..Default::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("--latest"), "{e}");
        assert!(SnapshotSelector::default().is_empty());
        assert!(!SnapshotSelector { latest: Some(1), ..Default::default() }.is_empty());
    }
}

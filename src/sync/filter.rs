//! Which images a sync run considers: the [`Scope`] (whose images) and the
//! [`Filters`] (`--filter`/`--exclude` terms: name globs, tags, visibility,
//! disk format, `metadata.K=V`), and the part of them Glance can apply server-side.
//! The same filters select the Cinder volumes of `sync --volumes` ([`Filters::matches_volume`]).

use crate::openstack::cinder::Volume;
use crate::openstack::glance::ImageRecord;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Whose images a run lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "project", rename_all = "snake_case")]
pub enum Scope {
    /// Images owned by this project id (the default: the credentials' project; or `--project`).
    Project(String),
    /// Every image the credentials can list (`--all-projects`; every project's for an admin).
    AllProjects,
    /// Every image the listing returns, when no project is known (`--glance-url` without Keystone).
    Visible,
}

impl Scope {
    pub(super) fn admits(&self, rec: &ImageRecord) -> bool {
        match self {
            Scope::Project(p) => rec.owner.as_deref() == Some(p.as_str()),
            Scope::AllProjects | Scope::Visible => true,
        }
    }
}

/// The image fields `--filter`/`--exclude` can test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FilterKey {
    /// `name=GLOB` (`*` any run, `?` one character).
    Name,
    /// `tag=T`: the image has tag T.
    Tag,
    Visibility,
    DiskFormat,
    /// `metadata.K=V`: an image's Glance property K is V; a volume's Cinder metadata K is V
    /// (the term's value holds `K=V`).
    Metadata,
}

/// One `KEY=VALUE` term of `--filter` or `--exclude`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterTerm {
    pub key: FilterKey,
    pub value: String,
}

/// Parses `KEY=VALUE` (the clap value parser of `--filter`/`--exclude`).
pub fn parse_filter(s: &str) -> Result<FilterTerm, String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    let key = match k.trim() {
        "name" => FilterKey::Name,
        "tag" => FilterKey::Tag,
        "visibility" => FilterKey::Visibility,
        "disk_format" => FilterKey::DiskFormat,
        m if m.starts_with("metadata.") => {
            let name = &m["metadata.".len()..];
            if name.is_empty() {
                return Err(format!("{s:?}: metadata.K=V needs a key K"));
            }
            return Ok(FilterTerm { key: FilterKey::Metadata, value: format!("{name}={v}") });
        }
        other => return Err(format!("unknown filter key {other:?} (name, tag, visibility, disk_format, metadata.K)")),
    };
    Ok(FilterTerm { key, value: v.to_string() })
}

impl FilterTerm {
    pub(super) fn matches(&self, rec: &ImageRecord) -> bool {
        match self.key {
            FilterKey::Name => crate::select::name_matches(&self.value, rec.name.as_deref().unwrap_or("")),
            FilterKey::Tag => rec.tags.contains(&self.value),
            FilterKey::Visibility => rec.visibility.as_deref() == Some(self.value.as_str()),
            FilterKey::DiskFormat => rec.disk_format.as_deref() == Some(self.value.as_str()),
            FilterKey::Metadata => metadata_matches(&self.value, &rec.properties),
        }
    }

    /// For a Cinder volume: `name` and `metadata.K` test it; the image-only keys
    /// (tag, visibility, disk_format) admit every volume.
    fn matches_volume(&self, v: &Volume) -> bool {
        match self.key {
            FilterKey::Name => crate::select::name_matches(&self.value, v.name.as_deref().unwrap_or("")),
            FilterKey::Metadata => metadata_matches(&self.value, &v.metadata),
            FilterKey::Tag | FilterKey::Visibility | FilterKey::DiskFormat => true,
        }
    }

    fn is_image_only(&self) -> bool {
        matches!(self.key, FilterKey::Tag | FilterKey::Visibility | FilterKey::DiskFormat)
    }
}

/// `K=V` against a string map (Glance properties, Cinder metadata): K is there and its text is V.
fn metadata_matches(term: &str, map: &Map<String, Value>) -> bool {
    let (k, want) = term.split_once('=').unwrap_or((term, ""));
    match map.get(k) {
        Some(Value::String(s)) => s == want,
        Some(Value::Bool(b)) => b.to_string() == want.to_ascii_lowercase(),
        Some(Value::Number(n)) => n.to_string() == want,
        _ => false,
    }
}

/// `--filter` terms (same key: OR; different keys: AND) minus `--exclude` terms (any one removes).
#[derive(Debug, Clone, Default)]
pub struct Filters {
    include: BTreeMap<FilterKey, Vec<FilterTerm>>,
    exclude: Vec<FilterTerm>,
}

impl Filters {
    pub fn new(include: Vec<FilterTerm>, exclude: Vec<FilterTerm>) -> Filters {
        let mut by_key: BTreeMap<FilterKey, Vec<FilterTerm>> = BTreeMap::new();
        for t in include {
            by_key.entry(t.key).or_default().push(t);
        }
        Filters { include: by_key, exclude }
    }

    pub fn matches(&self, rec: &ImageRecord) -> bool {
        self.include.values().all(|any| any.iter().any(|t| t.matches(rec))) && !self.exclude.iter().any(|t| t.matches(rec))
    }

    /// Whether `sync --volumes` archives volume `v`: as [`Filters::matches`], by name and
    /// `metadata.K`; an `--exclude` of an image-only key never removes a volume.
    pub fn matches_volume(&self, v: &Volume) -> bool {
        self.include.values().all(|any| any.iter().any(|t| t.matches_volume(v)))
            && !self.exclude.iter().any(|t| !t.is_image_only() && t.matches_volume(v))
    }

    /// Glance query parameters that narrow the listing to a superset of the
    /// matches: only keys with a single value (Glance ANDs repeated
    /// parameters), and names without glob characters.
    pub(super) fn server_side(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        for (key, terms) in &self.include {
            let [t] = terms.as_slice() else { continue };
            match key {
                FilterKey::Name if !t.value.contains(['*', '?', '[']) => q.push(("name", t.value.clone())),
                FilterKey::Name => {}
                FilterKey::Tag => q.push(("tag", t.value.clone())),
                FilterKey::Visibility => q.push(("visibility", t.value.clone())),
                FilterKey::DiskFormat => q.push(("disk_format", t.value.clone())),
                // (Glance lists by a property only for some keys: filtered here)
                FilterKey::Metadata => {}
            }
        }
        q
    }
}

/// The crate's one glob (`*`, `?`, `[…]`), shared with the snapshot selector.
pub use crate::select::glob_match;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::test_support::rec;
    use serde_json::json;

    #[test]
    fn globs() {
        assert!(glob_match("web-*", "web-01"));
        assert!(glob_match("*", ""));
        assert!(glob_match("w?b*-0?", "web-nightly-01"));
        assert!(!glob_match("web-?", "web-01"));
        assert!(glob_match("*a*b", "xxaxxab"));
        assert!(!glob_match("*a*b", "xxaxxa"));
        assert!(glob_match("exact", "exact") && !glob_match("exact", "exactly"));
    }

    #[test]
    fn same_key_ors_different_keys_and_exclude_removes() {
        let f = |inc: &[&str], exc: &[&str]| {
            Filters::new(inc.iter().map(|s| parse_filter(s).unwrap()).collect(), exc.iter().map(|s| parse_filter(s).unwrap()).collect())
        };
        let web = rec(json!({"name": "web-01", "tags": ["nightly"], "disk_format": "qcow2", "visibility": "private"}));
        let db = rec(json!({"name": "db-01", "tags": ["nightly", "keep"], "disk_format": "raw", "visibility": "private"}));
        let both = f(&["name=web-*", "name=db-*"], &[]);
        assert!(both.matches(&web) && both.matches(&db));
        let and = f(&["name=*-01", "disk_format=raw"], &[]);
        assert!(!and.matches(&web) && and.matches(&db));
        let ex = f(&["tag=nightly"], &["tag=keep"]);
        assert!(ex.matches(&web) && !ex.matches(&db));
        assert!(f(&[], &[]).matches(&web));
        assert!(parse_filter("owner=x").is_err() && parse_filter("name").is_err() && parse_filter("metadata.=x").is_err());
        // metadata.K=V: Glance properties of an image (Cinder metadata of a volume).
        let tagged = rec(json!({"name": "web-02", "backup": "yes"}));
        let yes = f(&["metadata.backup=yes"], &[]);
        assert!(yes.matches(&tagged) && !yes.matches(&web));
        assert!(!f(&["metadata.backup=no"], &[]).matches(&tagged));
        let vol = |name: &str, meta: Value| {
            Volume::from_json(json!({"id": "v1", "name": name, "status": "available", "size": 1, "metadata": meta})).unwrap()
        };
        assert!(yes.matches_volume(&vol("data", json!({"backup": "yes"}))));
        assert!(!yes.matches_volume(&vol("data", json!({"backup": "no"}))) && !yes.matches_volume(&vol("data", json!({}))));
        assert!(f(&["name=da*", "tag=x"], &[]).matches_volume(&vol("data", json!({}))), "image-only keys admit volumes");
        assert!(!f(&[], &["name=da*"]).matches_volume(&vol("data", json!({}))));
        assert!(f(&[], &["tag=x"]).matches_volume(&vol("data", json!({}))));
        // Only single-valued keys and literal names go to Glance.
        assert_eq!(both.server_side(), vec![]);
        assert_eq!(f(&["name=db-01", "tag=a"], &[]).server_side(), vec![("name", "db-01".to_string()), ("tag", "a".to_string())]);
    }
}

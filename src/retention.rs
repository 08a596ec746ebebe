//! Retention: which snapshots `forget` keeps, and why.
//!
//! The rules are restic's, which operators already know. Within each group,
//! snapshots are visited newest first; `--keep-last N` keeps the N newest,
//! `--keep-{hourly,daily,weekly,monthly,yearly} N` keep the newest snapshot of
//! each of the N most recent periods that *have* a snapshot (so a machine that
//! was off for a month does not lose its history), `--keep-within D` keeps
//! every snapshot within D of the group's newest one, `--keep-tag T` keeps
//! every snapshot tagged T. N = -1 means unlimited. Weeks are ISO weeks; all
//! periods are in UTC. A snapshot is kept if any rule keeps it; the reasons are
//! reported. On top of the policy, the newest snapshot of an image that was
//! deleted upstream is always kept unless the caller opts out.
//!
//! A snapshot dated after now + the allowed clock skew ([`horizon`]) was
//! written by a host whose clock is wrong. It steers nothing: it is kept,
//! never counted by a rule, and `--keep-within` counts back from the newest
//! snapshot that is not in the future (so at most from the horizon).
//!
//! Pure: no I/O, so the rules are tested as tables of fixed dates.

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Datelike, Months, Timelike, Utc};
use std::collections::{BTreeMap, HashSet};

/// A calendar span as restic writes it: `1y6m`, `14d`, `36h` (y, m = months, d, h).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

impl std::str::FromStr for Span {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Span> {
        let mut span = Span::default();
        let mut digits = String::new();
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let n: u32 = digits.parse().with_context(|| format!("span {s:?}: expected a number before {c:?}"))?;
            digits.clear();
            match c {
                'y' => span.years += n,
                'm' => span.months += n,
                'd' => span.days += n,
                'h' => span.hours += n,
                _ => bail!("span {s:?}: unknown unit {c:?} (use y, m, d, h as in 1y6m or 36h)"),
            }
        }
        if !digits.is_empty() || span == Span::default() {
            bail!("span {s:?}: write it as numbers with units, e.g. 7d, 1y6m, 36h");
        }
        Ok(span)
    }
}

impl Span {
    /// `t` minus this span (calendar months and years, like restic's AddDate).
    fn before(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let months = self.years * 12 + self.months;
        let t = t.checked_sub_months(Months::new(months)).unwrap_or(DateTime::<Utc>::MIN_UTC);
        t - chrono::Duration::days(self.days as i64) - chrono::Duration::hours(self.hours as i64)
    }
}

/// A retention policy. `None` means the rule is not used; `Some(-1)` unlimited.
/// These are the `imgarc forget --keep-*` flags (each doc line is its `--help`).
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Policy {
    /// Keep the N newest snapshots (-1: all)
    #[cfg_attr(feature = "clap", arg(long = "keep-last", value_name = "KEEP_LAST", allow_negative_numbers = true))]
    pub last: Option<i64>,
    /// Keep the newest snapshot of each of the last N hours that have one
    #[cfg_attr(feature = "clap", arg(long = "keep-hourly", value_name = "KEEP_HOURLY", allow_negative_numbers = true))]
    pub hourly: Option<i64>,
    /// Keep the newest snapshot of each of the last N days that have one
    #[cfg_attr(feature = "clap", arg(long = "keep-daily", value_name = "KEEP_DAILY", allow_negative_numbers = true))]
    pub daily: Option<i64>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one
    #[cfg_attr(feature = "clap", arg(long = "keep-weekly", value_name = "KEEP_WEEKLY", allow_negative_numbers = true))]
    pub weekly: Option<i64>,
    /// Keep the newest snapshot of each of the last N months that have one
    #[cfg_attr(feature = "clap", arg(long = "keep-monthly", value_name = "KEEP_MONTHLY", allow_negative_numbers = true))]
    pub monthly: Option<i64>,
    /// Keep the newest snapshot of each of the last N years that have one
    #[cfg_attr(feature = "clap", arg(long = "keep-yearly", value_name = "KEEP_YEARLY", allow_negative_numbers = true))]
    pub yearly: Option<i64>,
    /// Keep every snapshot within this span of the group's newest, e.g. 14d, 1y6m, 36h
    #[cfg_attr(feature = "clap", arg(long = "keep-within", value_name = "KEEP_WITHIN"))]
    pub within: Option<Span>,
    /// Keep every snapshot with this tag (repeatable)
    #[cfg_attr(feature = "clap", arg(long = "keep-tag", value_name = "KEEP_TAGS"))]
    pub tags: Vec<String>,
}

impl Policy {
    /// True when no rule is given (forget then refuses to remove anything).
    pub fn is_empty(&self) -> bool {
        [self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly].iter().all(|r| r.is_none_or(|n| n == 0))
            && self.within.is_none()
            && self.tags.is_empty()
    }
}

/// What retention needs to know of a snapshot.
#[derive(Debug, Clone)]
pub struct Item {
    pub time: DateTime<Utc>,
    pub tags: Vec<String>,
    /// The group it belongs to (see `forget --group-by`).
    pub group: String,
    /// The source image (a Glance image id), for the deleted-upstream rule.
    pub image: Option<String>,
}

/// The verdict on one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub keep: bool,
    /// Why it is kept (empty when it is removed).
    pub reasons: Vec<String>,
}

type Period = fn(DateTime<Utc>, usize) -> (i64, i64);

/// How far ahead of this host's clock a snapshot may be dated (the clock skew
/// between hosts tolerated) before it counts as dated in the future.
pub const DEFAULT_CLOCK_SKEW_SECS: i64 = 10 * 60;

/// The reason a snapshot dated in the future is kept.
pub const FUTURE_REASON: &str = "dated in the future (beyond the clock skew allowed): never removed by a policy";

/// The latest time a snapshot may carry: `now` plus the allowed clock skew.
pub fn horizon(now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::seconds(DEFAULT_CLOCK_SKEW_SECS)
}

/// Whether a snapshot time is past `horizon`; an unreadable time is not
/// judged here (callers report it as unreadable).
pub fn is_future(time: &str, horizon: DateTime<Utc>) -> bool {
    crate::util::parse_rfc3339(time).is_some_and(|t| t > horizon)
}

/// Decides every item; the result is parallel to `items`. `deleted_images`
/// lists images gone upstream whose newest snapshot must stay. Items dated
/// after `horizon` are kept with [`FUTURE_REASON`] and take no part in the rules.
pub fn decide(policy: &Policy, items: &[Item], deleted_images: &HashSet<String>, horizon: DateTime<Utc>) -> Vec<Verdict> {
    let mut verdicts = vec![Verdict { keep: false, reasons: Vec::new() }; items.len()];
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        if it.time > horizon {
            verdicts[i] = Verdict { keep: true, reasons: vec![FUTURE_REASON.to_string()] };
            continue;
        }
        groups.entry(&it.group).or_default().push(i);
    }
    for members in groups.values_mut() {
        // Newest first; equal times in input order, so the outcome is deterministic.
        members.sort_by(|&a, &b| items[b].time.cmp(&items[a].time).then(a.cmp(&b)));
        decide_group(policy, items, members, &mut verdicts);
    }
    // The newest snapshot of each image deleted upstream, whatever its group.
    let mut newest: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, it) in items.iter().enumerate().filter(|(_, it)| it.time <= horizon) {
        if let Some(img) = it.image.as_deref().filter(|img| deleted_images.contains(*img)) {
            let e = newest.entry(img).or_insert(i);
            if items[i].time > items[*e].time {
                *e = i;
            }
        }
    }
    for i in newest.into_values() {
        if !verdicts[i].keep {
            verdicts[i] = Verdict { keep: true, reasons: vec!["last snapshot of an image deleted upstream".into()] };
        }
    }
    verdicts
}

fn decide_group(policy: &Policy, items: &[Item], newest_first: &[usize], verdicts: &mut [Verdict]) {
    // Each bucket rule: (remaining count, the period key of a snapshot, reason, last period kept).
    let rules: [(Option<i64>, Period, &str); 6] = [
        (policy.last, |_, i| (i as i64, 0), "last snapshot"),
        (policy.hourly, |t, _| (t.num_days_from_ce() as i64, t.hour() as i64), "hourly snapshot"),
        (policy.daily, |t, _| (t.num_days_from_ce() as i64, 0), "daily snapshot"),
        (policy.weekly, |t, _| (t.iso_week().year() as i64, t.iso_week().week() as i64), "weekly snapshot"),
        (policy.monthly, |t, _| (t.year() as i64, t.month() as i64), "monthly snapshot"),
        (policy.yearly, |t, _| (t.year() as i64, 0), "yearly snapshot"),
    ];
    let mut remaining: Vec<i64> = rules.iter().map(|r| r.0.unwrap_or(0)).collect();
    let mut last_period: Vec<Option<(i64, i64)>> = vec![None; rules.len()];
    let within_from = match (policy.within, newest_first.first()) {
        (Some(span), Some(&newest)) => Some(span.before(items[newest].time)),
        _ => None,
    };
    for (pos, &i) in newest_first.iter().enumerate() {
        let it = &items[i];
        let mut reasons = Vec::new();
        if let Some(tag) = policy.tags.iter().find(|t| it.tags.contains(t)) {
            reasons.push(format!("tagged {tag}"));
        }
        if within_from.is_some_and(|from| it.time > from) {
            reasons.push("within the --keep-within span".to_string());
        }
        for (r, (_, period, reason)) in rules.iter().enumerate() {
            if remaining[r] == 0 {
                continue;
            }
            let p = period(it.time, pos);
            if last_period[r] != Some(p) {
                last_period[r] = Some(p);
                if remaining[r] > 0 {
                    remaining[r] -= 1;
                }
                reasons.push(reason.to_string());
            }
        }
        verdicts[i] = Verdict { keep: !reasons.is_empty(), reasons };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Thirteen snapshots of one image; index = position in this list.
    fn series() -> Vec<Item> {
        let times = [
            "2024-01-01T10:00:00Z", // 0  Monday, ISO 2024-W01
            "2024-01-01T22:00:00Z", // 1  same day
            "2024-01-02T10:00:00Z", // 2  exactly one year before #12
            "2024-01-05T10:00:00Z", // 3
            "2024-01-08T10:00:00Z", // 4  W02
            "2024-01-08T23:00:00Z", // 5  same day, W02
            "2024-01-15T10:00:00Z", // 6  W03
            "2024-02-01T10:00:00Z", // 7  W05
            "2024-02-29T10:00:00Z", // 8  W09, leap day
            "2024-03-10T10:00:00Z", // 9  Sunday, W10, tagged
            "2024-12-31T10:00:00Z", // 10 Tuesday, ISO 2025-W01
            "2025-01-01T10:00:00Z", // 11 2025-W01
            "2025-01-02T10:00:00Z", // 12 2025-W01, newest
        ];
        times
            .iter()
            .enumerate()
            .map(|(i, s)| Item {
                time: t(s),
                tags: if i == 9 { vec!["golden".into()] } else { vec![] },
                group: "vm".into(),
                image: Some("img-1".into()),
            })
            .collect()
    }

    /// Long after every date in [`series`]: nothing there is in the future.
    fn later() -> DateTime<Utc> {
        t("2030-01-01T00:00:00Z")
    }

    fn kept(policy: &Policy, items: &[Item], deleted: &[&str]) -> Vec<usize> {
        kept_at(policy, items, deleted, later())
    }

    fn kept_at(policy: &Policy, items: &[Item], deleted: &[&str], horizon: DateTime<Utc>) -> Vec<usize> {
        let deleted = deleted.iter().map(|s| s.to_string()).collect();
        decide(policy, items, &deleted, horizon).iter().enumerate().filter(|(_, v)| v.keep).map(|(i, _)| i).collect()
    }

    #[test]
    fn policies_keep_exactly_the_expected_snapshots() {
        let p = |f: fn(&mut Policy)| {
            let mut p = Policy::default();
            f(&mut p);
            p
        };
        let table: Vec<(&str, Policy, Vec<usize>)> = vec![
            ("last 3", p(|p| p.last = Some(3)), vec![10, 11, 12]),
            ("daily 3", p(|p| p.daily = Some(3)), vec![10, 11, 12]),
            ("daily 5", p(|p| p.daily = Some(5)), vec![8, 9, 10, 11, 12]),
            ("daily unlimited: one per day", p(|p| p.daily = Some(-1)), vec![1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12]),
            ("hourly 100: all distinct hours", p(|p| p.hourly = Some(100)), (0..13).collect()),
            ("weekly 2: ISO week of Dec 31 is 2025-W01", p(|p| p.weekly = Some(2)), vec![9, 12]),
            ("weekly 6", p(|p| p.weekly = Some(6)), vec![5, 6, 7, 8, 9, 12]),
            ("monthly 3", p(|p| p.monthly = Some(3)), vec![9, 10, 12]),
            ("monthly unlimited", p(|p| p.monthly = Some(-1)), vec![6, 8, 9, 10, 12]),
            ("yearly 3: only two years have snapshots", p(|p| p.yearly = Some(3)), vec![10, 12]),
            ("tag", p(|p| p.tags = vec!["golden".into()]), vec![9]),
            ("unknown tag keeps nothing", p(|p| p.tags = vec!["nope".into()]), vec![]),
            ("within 1y of the newest (strictly after)", p(|p| p.within = Some("1y".parse().unwrap())), (3..13).collect()),
            ("within 2d", p(|p| p.within = Some("2d".parse().unwrap())), vec![11, 12]),
            (
                "last 1 + monthly 2 + tag",
                p(|p| {
                    p.last = Some(1);
                    p.monthly = Some(2);
                    p.tags = vec!["golden".into()];
                }),
                vec![9, 10, 12],
            ),
            (
                "daily 2 + weekly 2 + monthly 2 + yearly 2",
                p(|p| {
                    p.daily = Some(2);
                    p.weekly = Some(2);
                    p.monthly = Some(2);
                    p.yearly = Some(2);
                }),
                vec![9, 10, 11, 12],
            ),
        ];
        for (name, policy, want) in table {
            assert_eq!(kept(&policy, &series(), &[]), want, "policy {name}");
        }
    }

    #[test]
    fn reasons_name_every_rule_that_keeps() {
        let policy = Policy { last: Some(1), monthly: Some(2), ..Default::default() };
        let v = decide(&policy, &series(), &HashSet::new(), later());
        assert_eq!(v[12].reasons, vec!["last snapshot", "monthly snapshot"]);
        assert_eq!(v[10].reasons, vec!["monthly snapshot"]);
        assert!(!v[11].keep && v[11].reasons.is_empty());
    }

    #[test]
    fn groups_are_decided_independently_and_input_order_does_not_matter() {
        let mut items = series();
        for (i, it) in items.iter_mut().enumerate() {
            it.group = if i % 2 == 0 { "even".into() } else { "odd".into() };
        }
        let policy = Policy { last: Some(2), ..Default::default() };
        assert_eq!(kept(&policy, &items, &[]), vec![9, 10, 11, 12]);
        let mut reversed = items.clone();
        reversed.reverse();
        let back: Vec<usize> = kept(&policy, &reversed, &[]).into_iter().map(|i| 12 - i).rev().collect();
        assert_eq!(back, vec![9, 10, 11, 12]);
    }

    #[test]
    fn last_snapshot_of_an_image_deleted_upstream_survives_unless_included() {
        let policy = Policy { tags: vec!["golden".into()], ..Default::default() };
        assert_eq!(kept(&policy, &series(), &["img-1"]), vec![9, 12]);
        assert_eq!(kept(&policy, &series(), &[]), vec![9]);
        let v = decide(&policy, &series(), &["img-1".to_string()].into(), later());
        assert_eq!(v[12].reasons, vec!["last snapshot of an image deleted upstream"]);
    }

    /// "Now" for the future-dated cases: just after #11, before #12.
    fn now_before_12() -> DateTime<Utc> {
        horizon(t("2025-01-01T12:00:00Z"))
    }

    #[test]
    fn snapshots_dated_in_the_future_steer_nothing_and_are_kept() {
        let p = |f: fn(&mut Policy)| {
            let mut p = Policy::default();
            f(&mut p);
            p
        };
        // #12 (2025-01-02T10:00) is in the future as seen at now_before_12.
        let table: Vec<(&str, Policy, Vec<usize>)> = vec![
            ("last 2: the future one does not take a slot", p(|p| p.last = Some(2)), vec![10, 11, 12]),
            ("within 2d counts back from #11, not from #12", p(|p| p.within = Some("2d".parse().unwrap())), vec![10, 11, 12]),
            ("within 1y counts back from #11", p(|p| p.within = Some("1y".parse().unwrap())), (1..13).collect()),
            ("tag: the future one is kept anyway", p(|p| p.tags = vec!["golden".into()]), vec![9, 12]),
            ("daily 1", p(|p| p.daily = Some(1)), vec![11, 12]),
        ];
        for (name, policy, want) in table {
            assert_eq!(kept_at(&policy, &series(), &[], now_before_12()), want, "policy {name}");
        }
        let v = decide(&Policy { last: Some(1), ..Default::default() }, &series(), &HashSet::new(), now_before_12());
        assert_eq!(v[12].reasons, vec![FUTURE_REASON]);
        assert_eq!(v[11].reasons, vec!["last snapshot"]);
        // A snapshot dated a year ahead cannot make --keep-within drop everything else.
        let mut items = series();
        items[12].time = t("2026-01-02T10:00:00Z");
        let within = p(|p| p.within = Some("2d".parse().unwrap()));
        assert_eq!(kept_at(&within, &items, &[], horizon(t("2025-01-02T11:00:00Z"))), vec![10, 11, 12]);
        // The newest real snapshot of an image deleted upstream is the one kept.
        let tag = p(|p| p.tags = vec!["golden".into()]);
        assert_eq!(kept_at(&tag, &series(), &["img-1"], now_before_12()), vec![9, 11, 12]);
        // Within the skew is not the future.
        assert!(!is_future("2025-01-01T12:09:00Z", now_before_12()));
        assert!(is_future("2025-01-01T12:11:00Z", now_before_12()));
    }

    #[test]
    fn empty_policy_and_span_syntax() {
        assert!(Policy::default().is_empty());
        assert!(Policy { daily: Some(0), ..Default::default() }.is_empty());
        assert!(!Policy { daily: Some(-1), ..Default::default() }.is_empty());
        assert_eq!("1y6m2d3h".parse::<Span>().unwrap(), Span { years: 1, months: 6, days: 2, hours: 3 });
        for bad in ["", "7", "7x", "d", "0d"] {
            assert!(bad.parse::<Span>().is_err(), "{bad:?} parsed");
        }
    }
}

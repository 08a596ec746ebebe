//! `sync --shard K/N`: one of N hosts archiving a cloud into one repository, each
//! its own share of the images, coordinated only through the repository.
//!
//! An id belongs to exactly one shard, whatever the listing's order or paging: the
//! first 8 bytes of BLAKE3 of the id's bytes (as Glance or Cinder spells it), read
//! little-endian, modulo N, plus 1 ([`Shard::of`]). K is 1-based: `1/3`, `2/3` and
//! `3/3` together cover everything. A Glance image is sharded by its image id, the
//! disks of a volume-backed instance snapshot by that image's id (they go with it),
//! a `--volumes` volume by its Cinder volume id.
//!
//! The sync lock carries its shard ([`Shard::overlaps`] decides which two syncs
//! exclude each other, `repository::lock`). A leaf module: `repository` and `sync`
//! both use it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Shard `index` of `count` (1 ≤ index ≤ count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    /// 1-based.
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Shard `index` of `count`, or why that is no shard.
    pub fn new(index: u32, count: u32) -> Result<Shard, String> {
        if count == 0 {
            return Err("the shard count N must be at least 1".into());
        }
        if index == 0 || index > count {
            return Err(format!("the shard index K counts from 1 to N ({index} is not in 1..={count})"));
        }
        Ok(Shard { index, count })
    }

    /// The shard (1-based) that `id` belongs to among `count` (at least 1).
    pub fn of(id: &str, count: u32) -> u32 {
        let hash = blake3::hash(id.as_bytes());
        let first: [u8; 8] = hash.as_bytes()[..8].try_into().expect("a BLAKE3 hash has 32 bytes");
        (u64::from_le_bytes(first) % u64::from(count.max(1))) as u32 + 1
    }

    /// Whether `id` belongs to this shard.
    pub fn owns(&self, id: &str) -> bool {
        Shard::of(id, self.count) == self.index
    }

    /// Whether `id` belongs to `shard` (everything belongs to an unsharded run).
    pub fn admits(shard: Option<Shard>, id: &str) -> bool {
        shard.is_none_or(|s| s.owns(id))
    }

    /// Whether two runs (`None`: unsharded, all ids) may touch the same id, so must not run
    /// at once. Shards of one count overlap only when they are the same shard; shards of
    /// two counts (`2/3` and `2/4`: an operator changing N) are taken to overlap, as they
    /// nearly always do, and an unsharded run overlaps every shard.
    pub fn overlaps(a: Option<Shard>, b: Option<Shard>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => a.count != b.count || a.index == b.index,
            _ => true,
        }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `K/N`, both whole numbers, 1 ≤ K ≤ N.
    fn from_str(s: &str) -> Result<Shard, String> {
        let Some((k, n)) = s.split_once('/') else {
            return Err("expected K/N, e.g. 2/3 (shard K of N, K from 1 to N)".into());
        };
        let number = |part: &str, what: &str| -> Result<u32, String> {
            part.trim().parse::<u32>().map_err(|_| format!("the {what} {part:?} is not a whole number (expected K/N, e.g. 2/3)"))
        };
        Shard::new(number(k, "shard index K")?, number(n, "shard count N")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The assignment is a pure function of the id (stable across runs and listings, pinned
    /// here so that a change of it, which would move images between shards, fails), every
    /// id lands in exactly one of 1..=N, and N shards share ids roughly evenly.
    #[test]
    fn every_id_has_one_stable_shard_and_shards_are_balanced() {
        let id = "6f1c2a3e-0000-4000-8000-000000000000";
        let h = blake3::hash(id.as_bytes());
        let expected = (u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap()) % 3) as u32 + 1;
        assert_eq!(Shard::of(id, 3), expected);
        assert_eq!(Shard::of(id, 3), Shard::of(&String::from(id), 3), "a pure function of the bytes");
        assert_eq!(Shard::of(id, 1), 1);
        // Pinned values: the on-disk meaning of a shard (docs/nightly.md) must not drift.
        assert_eq!(Shard::of("", 7), (u64::from_le_bytes(*b"\xaf\x13\x49\xb9\xf5\xf9\xa1\xa6") % 7) as u32 + 1);

        for n in [1u32, 2, 3, 5, 16] {
            let shards: Vec<Shard> = (1..=n).map(|k| Shard::new(k, n).unwrap()).collect();
            let mut per = vec![0usize; n as usize];
            let total = 6000;
            for i in 0..total {
                let id = format!("{:08x}-1111-4222-8333-{:012x}", i * 7919, i);
                let owners: Vec<&Shard> = shards.iter().filter(|s| s.owns(&id)).collect();
                assert_eq!(owners.len(), 1, "{id} in {n} shards: {owners:?}");
                per[(owners[0].index - 1) as usize] += 1;
            }
            let fair = total / n as usize;
            for (k, c) in per.iter().enumerate() {
                assert!(*c > fair * 8 / 10 && *c < fair * 12 / 10, "shard {}/{n} got {c} of {total}: {per:?}", k + 1);
            }
        }
    }

    #[test]
    fn k_of_n_is_parsed_and_validated() {
        assert_eq!("2/3".parse::<Shard>().unwrap(), Shard { index: 2, count: 3 });
        assert_eq!("1/1".parse::<Shard>().unwrap().to_string(), "1/1");
        for (bad, says) in [
            ("0/3", "counts from 1"),
            ("4/3", "counts from 1 to N (4 is not in 1..=3)"),
            ("1/0", "at least 1"),
            ("x/y", "not a whole number"),
            ("3", "expected K/N"),
            ("-1/3", "not a whole number"),
            ("1/3/4", "not a whole number"),
            ("", "expected K/N"),
        ] {
            let err = bad.parse::<Shard>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn only_shards_of_one_count_with_different_indexes_run_together() {
        let s = |k, n| Some(Shard::new(k, n).unwrap());
        assert!(Shard::overlaps(None, None), "two unsharded syncs");
        assert!(Shard::overlaps(None, s(1, 3)) && Shard::overlaps(s(2, 3), None));
        assert!(Shard::overlaps(s(2, 3), s(2, 3)));
        assert!(!Shard::overlaps(s(1, 3), s(2, 3)));
        assert!(Shard::overlaps(s(2, 3), s(2, 4)) && Shard::overlaps(s(1, 3), s(2, 4)), "different counts");
        assert!(Shard::admits(None, "x"));
    }
}

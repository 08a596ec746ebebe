//! `imgarc drill`: proves that snapshots restore (and boot). For each chosen
//! snapshot it rebuilds the image end to end against every recorded digest,
//! checks the partition table and every filesystem read-only, optionally
//! boots the guest from the archive ([`boot`]) and restores it into a Glance;
//! each result is stored as a `drills/` record ([`crate::repository::drill`])
//! that every host sees, `report` shows and prune drops with its snapshot.

pub mod boot;

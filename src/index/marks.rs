//! Prune marks in the cache: which packs a mark lists, so archives stop
//! deduplicating against them and prune can sweep them (`repository::marks`).

use super::{id_of, Index};
use crate::ids::Id;
use anyhow::Result;
use rusqlite::{params, TransactionBehavior};
use std::collections::HashSet;

/// A pack listed by a prune mark, as the cache holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkedPackRow {
    pub pack: Id,
    pub size: u64,
    pub reason: String,
}

/// A prune mark the cache knows of.
#[derive(Debug, Clone)]
pub struct MarkRow {
    pub key: String,
    pub created: String,
    pub packs: Vec<MarkedPackRow>,
}

impl Index {
    pub fn add_mark(&mut self, key: &str, mark: &crate::repository::marks::PruneMark) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("INSERT OR IGNORE INTO marks VALUES(?1, ?2)", params![key, mark.created])?;
        for p in &mark.packs {
            tx.execute("INSERT OR IGNORE INTO marked_packs VALUES(?1, ?2, ?3, ?4)", params![&p.id.0[..], key, p.size as i64, p.reason])?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn remove_mark(&mut self, key: &str) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM marked_packs WHERE mark = ?1", [key])?;
        tx.execute("DELETE FROM marks WHERE key = ?1", [key])?;
        tx.commit()?;
        Ok(())
    }

    /// Every prune mark the cache knows of, oldest first.
    pub fn marks(&self) -> Result<Vec<MarkRow>> {
        let mut st = self.conn.prepare("SELECT key, created FROM marks ORDER BY created, key")?;
        let rows: Vec<(String, String)> = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        let mut st = self.conn.prepare("SELECT pack, size, reason FROM marked_packs WHERE mark = ?1")?;
        rows.into_iter()
            .map(|(key, created)| {
                let packs = st
                    .query_map([&key], |r| {
                        Ok(MarkedPackRow { pack: id_of(r.get(0)?)?, size: r.get::<_, i64>(1)? as u64, reason: r.get(2)? })
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(MarkRow { key, created, packs })
            })
            .collect()
    }

    /// Packs listed by any prune mark.
    pub fn marked_packs(&self) -> Result<HashSet<Id>> {
        let mut st = self.conn.prepare("SELECT DISTINCT pack FROM marked_packs")?;
        let rows = st.query_map([], |r| id_of(r.get(0)?))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

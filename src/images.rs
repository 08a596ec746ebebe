//! A cloud's Glance images joined with what the repository archived of each
//! (`imgarc glance list`): the latest snapshot per Glance image id.

use crate::index::Index;
use crate::openstack::glance::GlanceClient;
use crate::repository::snapshot::Source;
use anyhow::Result;
use serde::Serialize;
use std::collections::HashMap;

/// One Glance image and its latest archive here, if any.
#[derive(Debug, Clone, Serialize)]
pub struct ImageListing {
    pub id: String,
    pub name: Option<String>,
    pub status: String,
    pub disk_format: Option<String>,
    pub size: Option<u64>,
    pub updated_at: Option<String>,
    pub archived: bool,
    /// Time of the latest snapshot of this image (RFC 3339).
    pub archived_at: Option<String>,
    /// Id of that snapshot.
    pub snapshot: Option<String>,
}

/// Lists the images `glance` shows; `index` (absent when there is no
/// repository) says which are archived.
pub fn list_images(glance: &GlanceClient, index: Option<&Index>) -> Result<Vec<ImageListing>> {
    let images = glance.list()?;
    let archived = match index {
        Some(index) => latest_snapshots(index)?,
        None => HashMap::new(),
    };
    Ok(images
        .into_iter()
        .map(|i| {
            let a = archived.get(&i.id);
            ImageListing {
                archived: a.is_some(),
                archived_at: a.map(|x| x.0.clone()),
                snapshot: a.map(|x| x.1.clone()),
                id: i.id,
                name: i.name,
                status: i.status,
                disk_format: i.disk_format,
                size: i.size,
                updated_at: i.updated_at,
            }
        })
        .collect())
}

/// Glance image id → (time, snapshot id) of its latest snapshot.
fn latest_snapshots(index: &Index) -> Result<HashMap<String, (String, String)>> {
    let mut archived: HashMap<String, (String, String)> = HashMap::new();
    for row in index.snapshot_rows()? {
        if let Some(snap) = index.snapshot_head(&row.id)? {
            if let Source::Glance { image_id, .. } = &snap.source {
                let e = archived.entry(image_id.clone()).or_insert((String::new(), String::new()));
                if snap.time > e.0 {
                    *e = (snap.time.clone(), row.id.to_hex());
                }
            }
        }
    }
    Ok(archived)
}

//! Glance v2 image API: a client with lookup, list, streaming download with
//! Range resume and retries, create / upload / stage + import, wait, delete,
//! and the workflow restoring an archived image into another cloud.
//!
//! * `client` — [`GlanceClient`]: endpoint, auth, the one request path (retry, 401 renewal).
//! * `record` — [`ImageRecord`] and the store-location fields never kept.
//! * `download` — [`ImageDownload`], the resumable `Read` of image data.
//! * `images` — image operations (`image`, `list`, `create`, `upload_with`, `wait_active`, …).
//! * `restore` — [`restore_image`], [`create_request`] and [`restore_metadata`].

mod client;
mod download;
mod images;
mod record;
mod restore;
#[cfg(test)]
mod tests;

pub use client::{GlanceClient, RetryPolicy};
pub use download::ImageDownload;
pub use images::UploadMethod;
pub use record::{redact_store_locations, ImageRecord, VolumeBacked, STORE_LOCATION_FIELDS};
pub use restore::{create_request, restore_image, restore_metadata, RestoreOptions, RestoreOutcome, GLANCE_OWNED, SOURCE_CLOUD_ONLY};

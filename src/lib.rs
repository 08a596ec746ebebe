//! imgarc: a content-addressed, deduplicating archiver for VM images.
pub mod backend;
pub mod openstack;

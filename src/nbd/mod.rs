//! `serve-nbd`: any snapshot's guest disk as a read-only NBD export, read from the archive
//! through the exact chunk reader (only the chunks clients read are fetched), with no root,
//! no kernel module and no restore first. `proto` owns the wire protocol and every byte a
//! client sends (handshake, options, requests, replies; bounded); `server` the listener,
//! the connection threads, the disk-reader threads they share, and the options and report
//! of the operation. docs/nbd.md is the user's guide.

pub mod proto;
pub mod server;

pub use server::{Listen, NbdServer, ServeNbdOptions, ServeReady};

//! Warnings: what an operation noticed, worked around, and must tell the
//! user about. There is one channel: [`Warnings::warn`] records the message
//! for the operation's typed report (the `warnings` of `--json`) and, at the
//! same moment, emits it as a `tracing` warning event, which the binary
//! prints on standard error. The library itself never prints.
//!
//! Diagnostics that are not warnings of an operation (a retried request, a
//! renewed token) are plain `tracing` events at `info` or `debug`.

use std::sync::{Arc, Mutex};

/// A shared, append-only list of warnings. Clones share the list, so a
/// worker thread or a long-lived client can hold one and the operation that
/// started them reads everything at the end.
#[derive(Clone, Default, Debug)]
pub struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `message` and emits it as a log event.
    pub fn warn(&self, message: impl Into<String>) {
        let message = message.into();
        tracing::warn!("{message}");
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(message);
    }

    /// Everything recorded so far; the list is left empty.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_list_in_order() {
        let w = Warnings::new();
        let w2 = w.clone();
        w.warn("first");
        std::thread::spawn(move || w2.warn("second")).join().unwrap();
        assert_eq!(w.take(), ["first", "second"]);
        assert!(w.take().is_empty());
    }
}

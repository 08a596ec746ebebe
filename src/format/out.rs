//! The output of a one-pass image writer: every byte goes through [`Out::put`], which counts
//! them, so a writer always knows the file offset it is at (tables name offsets) and what it
//! returns as the bytes written; [`Out::pad_to`] writes the zeros up to an offset.
use std::io::Write;

pub(crate) struct Out<'a> {
    w: &'a mut dyn Write,
    /// Bytes written so far: the offset of the next byte in the output file.
    pub(crate) pos: u64,
}

impl<'a> Out<'a> {
    pub(crate) fn new(w: &'a mut dyn Write) -> Out<'a> {
        Out { w, pos: 0 }
    }

    pub(crate) fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.w.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }

    /// Zeros up to offset `to` (nothing when already there or past it).
    pub(crate) fn pad_to(&mut self, to: u64) -> std::io::Result<()> {
        static Z: [u8; 64 << 10] = [0; 64 << 10];
        while self.pos < to {
            let n = (to - self.pos).min(Z.len() as u64) as usize;
            self.put(&Z[..n])?;
        }
        Ok(())
    }
}

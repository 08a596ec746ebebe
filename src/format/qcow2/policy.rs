//! The safety policy for untrusted qcow2 images (format-spec/qcow2-layout.md, "Safety
//! policy"): the resource limits the decomposer works within ([`Policy`]), and the decision,
//! from the header alone, whether an image is refused, stored opaque or decomposed.

use super::error::Qcow2Error;
use super::header::{self, Header};
use super::ImageInfo;

/// Default [`Policy::max_spill_bytes`]: 2 GiB (`--spill-limit`).
pub const DEFAULT_SPILL_LIMIT: u64 = 2 << 30;
/// Default [`Policy::max_segments`]: 4 Mi segments (≈ 200 MiB of RAM at most; a plain image
/// needs a few per 512 MiB of disk, a compressed one about one per compressed cluster).
pub const DEFAULT_MAX_SEGMENTS: usize = 4 << 20;

/// Safety policy and resource limits for decomposing untrusted images.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Archive images with a backing file as opaque bytes (flagged) instead of refusing.
    pub allow_backing_file_opaque: bool,
    /// Archive images with an external data file as opaque bytes (flagged) instead of refusing.
    pub allow_data_file_opaque: bool,
    /// Bytes of clusters with unknown role held in RAM before spilling to `spill_dir`.
    pub max_pending_ram: usize,
    /// Directory of the (immediately unlinked, mode 0600) spill file.
    pub spill_dir: std::path::PathBuf,
    /// Upper bound on spilled bytes ([`DEFAULT_SPILL_LIMIT`]); beyond it the image is stored
    /// opaque from that point on (exact, but the rest does not dedup as guest data).
    pub max_spill_bytes: u64,
    /// Upper bound on recipe segments held while decomposing ([`DEFAULT_MAX_SEGMENTS`]): it
    /// bounds the decomposer's memory (~48 bytes a segment) and keeps the encoded recipe far
    /// below the 256 MiB a reader accepts. Beyond it the image is stored opaque.
    pub max_segments: usize,
    /// Refuse images whose virtual size exceeds this.
    pub max_virtual_size: u64,
    /// Cap on outstanding table references (future roles, compressed streams).
    pub max_tracked: usize,
    /// Refuse (error) instead of falling back to opaque storage.
    pub strict: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow_backing_file_opaque: false,
            allow_data_file_opaque: false,
            max_pending_ram: 64 << 20,
            spill_dir: std::env::temp_dir(),
            max_spill_bytes: DEFAULT_SPILL_LIMIT,
            max_segments: DEFAULT_MAX_SEGMENTS,
            max_virtual_size: 64 << 40,
            max_tracked: 1 << 24,
            strict: false,
        }
    }
}

impl Policy {
    /// The header's verdict: an error refuses the image, `Some(reason)` stores it opaque (exact
    /// bytes, no guest-data dedup), `None` decomposes it. Records an external data file in `info`.
    pub(super) fn admit(&self, h: &Header, info: &mut ImageInfo) -> Result<Option<String>, Qcow2Error> {
        if h.size > self.max_virtual_size {
            return Err(Qcow2Error::Limit(format!("virtual size {} exceeds the limit of {} bytes", h.size, self.max_virtual_size)));
        }
        let has_data_file =
            h.incompatible & header::INCOMPAT_DATA_FILE != 0 || h.autoclear & header::AUTOCLEAR_RAW_DATA != 0 || h.data_file.is_some();
        let mut opaque: Option<String> = None;
        if has_data_file {
            info.data_file.get_or_insert_with(String::new);
            if !self.allow_data_file_opaque {
                return Err(Qcow2Error::DataFile(h.data_file.clone().unwrap_or_default()));
            }
            opaque = Some(format!("external data file {:?}", h.data_file.clone().unwrap_or_default()));
        } else if let Some(b) = &h.backing_file {
            if !self.allow_backing_file_opaque {
                return Err(Qcow2Error::BackingFile(b.clone()));
            }
            opaque = Some(format!("backing file {b:?}"));
        } else if info.encrypted {
            opaque = Some(format!("encrypted image (crypt_method {})", h.crypt_method));
        } else if h.incompatible & !header::INCOMPAT_KNOWN != 0 {
            opaque = Some(format!("unknown incompatible feature bits {:#x}", h.incompatible & !header::INCOMPAT_KNOWN));
        } else if info.corrupt {
            opaque = Some("the image's corrupt bit is set".into());
        }
        self.refuse_opaque(opaque.as_deref())?;
        Ok(opaque)
    }

    /// A strict policy refuses an image that would be stored opaque (wholly or from some point on).
    pub(super) fn refuse_opaque(&self, opaque: Option<&str>) -> Result<(), Qcow2Error> {
        match opaque {
            Some(r) if self.strict => Err(Qcow2Error::Limit(format!("strict policy refuses opaque storage: {r}"))),
            _ => Ok(()),
        }
    }
}

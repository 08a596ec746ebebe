//! Identifiers: 32-byte BLAKE3 digests naming chunks, packs, index and snapshot objects.

use std::fmt;

/// A BLAKE3-256 digest. Chunks (and tree blobs) are named by the digest of
/// their uncompressed bytes; packs, index objects and snapshots by the digest
/// of the object as stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; 32]);

impl Id {
    pub fn of(data: &[u8]) -> Id {
        Id(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Id> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Id(out))
    }

    pub fn from_slice(b: &[u8]) -> Option<Id> {
        Some(Id(b.try_into().ok()?))
    }

    /// First eight bytes as an integer, for the probabilistic filter.
    pub fn prefix_u64(&self) -> u64 {
        u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes"))
    }

    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

/// How chunk and tree-blob ids are computed: unkeyed BLAKE3 (`chunk_id:
/// blake3`, unencrypted repositories) or BLAKE3 keyed with a repository secret
/// (`blake3-keyed`), so that an id reveals nothing about the content. Packs,
/// index objects and snapshots are always named by the unkeyed BLAKE3 of the
/// object as stored ([`Id::of`]).
#[derive(Clone, PartialEq, Eq)]
pub struct IdKey(Option<[u8; 32]>);

impl IdKey {
    pub const UNKEYED: IdKey = IdKey(None);

    pub fn keyed(key: [u8; 32]) -> IdKey {
        IdKey(Some(key))
    }

    pub fn is_keyed(&self) -> bool {
        self.0.is_some()
    }

    /// The id of a chunk or tree blob with these (uncompressed) bytes.
    pub fn id_of(&self, data: &[u8]) -> Id {
        match &self.0 {
            None => Id::of(data),
            Some(k) => Id(*blake3::keyed_hash(k, data).as_bytes()),
        }
    }
}

impl Drop for IdKey {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        if let Some(k) = &mut self.0 {
            k.zeroize();
        }
    }
}

impl fmt::Debug for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_keyed() { "IdKey(keyed, ***)" } else { "IdKey(unkeyed)" })
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        let s = String::deserialize(d)?;
        Id::from_hex(&s).ok_or_else(|| serde::de::Error::custom(format!("invalid id {s:?}")))
    }
}

//! The fuzz targets, one function per parser of untrusted bytes, so that one implementation
//! serves both the libFuzzer binaries (`fuzz_targets/*.rs`, nightly + cargo-fuzz) and the
//! stable replay test of the main crate (`tests/integration/fuzz_replay.rs` includes this file by path
//! and feeds it every file under `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`).
//!
//! Every function must return normally for any input: a panic is a bug. Where a parser sits
//! behind a checksum or a compression layer the fuzzer cannot forge, the target also feeds
//! the input *through* that layer (recompressed, re-digested), so the structure behind it is
//! explored too. Nothing here allocates in proportion to a size the input claims.
//!
//! This file is included with `#[path]`: no crate attributes, no `crate::` paths.

use imgarc::backend::{Backend, BackendError, BackendResult, ObjectInfo};
use imgarc::format::{detect, qcow2};
use imgarc::ids::Id;
use imgarc::repository::{
    self, config::Config, extents, file::RepoFile, index_object::IndexObject, marks, pack, snapshot::Snapshot, Repository,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A fuzz target: must return normally for any input.
pub type Target = fn(&[u8]);

/// Every target by name (the directory name under seeds/ and regressions/).
pub const TARGETS: &[(&str, Target)] = &[
    ("qcow2_header", qcow2_header),
    ("decompose", decompose),
    ("index_object", index_object),
    ("pack", pack_trailer_and_blobs),
    ("snapshot", snapshot),
    ("extents", extent_list),
    ("config", config),
    ("objects", lock_mark_upstream),
    ("recipe", recipe),
    ("detect", format_detection),
    ("sealed_pack", sealed_pack),
    ("sealed_blob", sealed_blob),
    ("key_object", key_object),
    ("s3_xml", s3_xml),
    ("vdi", vdi),
    ("vhdx", vhdx),
    ("vhd", vhd),
    ("vmdk", vmdk),
    ("fat", fat),
    ("nbd", nbd),
    ("xfs", xfs),
    ("partition", partition),
    ("lvm", lvm),
    ("ext4", ext4),
    ("console", console),
];

/// QCOW2 header and extension parsing, with and without a known file length.
pub fn qcow2_header(data: &[u8]) {
    for file_len in [Some(data.len() as u64), None, Some(u64::MAX)] {
        if let Ok(h) = qcow2::header::parse(data, file_len) {
            // Accepted headers must make the derived sizes safe to use.
            assert!((9..=21).contains(&h.cluster_bits));
            assert!(h.l2_span() > 0 && h.l1_size as u64 * 8 <= qcow2::header::MAX_L1_BYTES);
            assert!(h.backing_file.as_ref().is_none_or(|n| n.len() <= 1023 * 3));
        }
    }
}

#[derive(Default)]
struct MemStreams {
    guest: BTreeMap<u64, Vec<u8>>,
    literal: Vec<u8>,
}

impl qcow2::DecomposeSink for MemStreams {
    fn guest(&mut self, off: u64, d: &[u8]) -> std::io::Result<()> {
        self.guest.insert(off, d.to_vec());
        Ok(())
    }
    fn literal(&mut self, d: &[u8]) -> std::io::Result<()> {
        self.literal.extend_from_slice(d);
        Ok(())
    }
}

impl qcow2::RebuildSource for MemStreams {
    fn read_guest(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        let end = off + buf.len() as u64;
        for (&o, d) in self.guest.range(..end) {
            let de = o + d.len() as u64;
            if de <= off {
                continue;
            }
            let (a, b) = (o.max(off), de.min(end));
            buf[(a - off) as usize..(b - off) as usize].copy_from_slice(&d[(a - o) as usize..(b - o) as usize]);
        }
        Ok(())
    }
    fn read_literal(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let range = usize::try_from(off).ok().and_then(|o| Some(o..o.checked_add(buf.len())?));
        let s = range.and_then(|r| self.literal.get(r)).ok_or_else(|| std::io::Error::other("literal range"))?;
        buf.copy_from_slice(s);
        Ok(())
    }
}

/// The streaming decomposer (with and without a declared length): never panics, and
/// whatever it accepts rebuilds byte-exactly.
pub fn decompose(data: &[u8]) {
    let policy = qcow2::Policy { max_pending_ram: 1 << 20, max_virtual_size: 1 << 40, ..qcow2::Policy::default() };
    for with_len in [true, false] {
        let mut m = MemStreams::default();
        if let Ok(d) = qcow2::decompose(data, with_len.then_some(data.len() as u64), &policy, &mut m) {
            let mut out = Vec::new();
            qcow2::rebuild(&d.recipe, &mut m, &mut out).expect("rebuild of an accepted image");
            assert!(out == data, "rebuild not byte-exact");
        }
    }
}

/// The VDI decomposer (with and without a declared length): never panics, whatever it accepts rebuilds
/// byte-exactly, and a small accepted guest disk written again as VDI decomposes to the same disk.
pub fn vdi(data: &[u8]) {
    use imgarc::format::{vdi, WriteOptions};
    let policy = qcow2::Policy { max_virtual_size: 1 << 40, ..qcow2::Policy::default() };
    for with_len in [true, false] {
        let mut m = MemStreams::default();
        let Ok(d) = vdi::decompose(&mut &data[..], with_len.then_some(data.len() as u64), &policy, &mut m) else { continue };
        let mut out = Vec::new();
        qcow2::rebuild(&d.recipe, &mut m, &mut out).expect("rebuild of an accepted image");
        assert!(out == data, "rebuild not byte-exact");
        if d.virtual_size > 4 << 20 {
            continue;
        }
        let ranges: Vec<(u64, u64)> = m.guest.iter().map(|(&o, b)| (o, b.len() as u64)).collect();
        let mut written = Vec::new();
        vdi::write(&WriteOptions::default(), d.virtual_size, &ranges, &mut m, &mut written).expect("write of an accepted disk");
        let mut again = MemStreams::default();
        let d2 = vdi::decompose(&mut &written[..], Some(written.len() as u64), &policy, &mut again).expect("our own vdi decomposes");
        let (mut a, mut b) = (vec![0u8; d.virtual_size as usize], vec![0u8; d2.virtual_size as usize]);
        qcow2::RebuildSource::read_guest(&mut m, 0, &mut a).expect("memory read");
        qcow2::RebuildSource::read_guest(&mut again, 0, &mut b).expect("memory read");
        b.truncate(a.len());
        assert!(a == b, "the written vdi holds another disk");
    }
}

/// The VHD decomposer (declared vhd, with and without a known length) on the input and on the
/// input with its footer and dynamic-header checksums recomputed (so the fields behind them are
/// explored): never panics, and whatever it accepts rebuilds byte-exactly.
pub fn vhd(data: &[u8]) {
    use imgarc::format::FormatKind;
    let policy = qcow2::Policy { max_virtual_size: 1 << 40, max_tracked: 1 << 20, ..qcow2::Policy::default() };
    let mut fixed = data.to_vec();
    let sum = |b: &mut [u8], at: usize| {
        let s = b.iter().enumerate().filter(|(i, _)| !(at..at + 4).contains(i)).fold(0u32, |s, (_, &x)| s.wrapping_add(x as u32));
        b[at..at + 4].copy_from_slice(&(!s).to_be_bytes());
    };
    if fixed.len() >= 512 {
        sum(&mut fixed[..512], 64);
        let n = fixed.len();
        sum(&mut fixed[n - 512..], 64);
        let off = u64::from_be_bytes(fixed[16..24].try_into().expect("8 bytes"));
        if let Some(h) = usize::try_from(off).ok().filter(|&o| o.checked_add(1024).is_some_and(|e| e <= n - 512)) {
            sum(&mut fixed[h..h + 1024], 36);
        }
    }
    for bytes in [data, &fixed[..]] {
        for with_len in [true, false] {
            let mut m = MemStreams::default();
            let len = with_len.then_some(bytes.len() as u64);
            if let Ok(d) = imgarc::format::decompose(FormatKind::Vhd, &mut &bytes[..], len, &policy, &mut m) {
                let mut out = Vec::new();
                imgarc::format::rebuild::rebuild(&d.recipe, &mut m, &mut out).expect("rebuild of an accepted image");
                assert!(out == bytes, "rebuild not byte-exact");
            }
        }
    }
}

/// The VMDK decomposer (with and without a declared length): never panics, whatever it
/// accepts rebuilds byte-exactly, and its guest pieces stay inside the virtual size.
pub fn vmdk(data: &[u8]) {
    let policy = qcow2::Policy { max_virtual_size: 1 << 40, max_tracked: 1 << 16, ..qcow2::Policy::default() };
    for with_len in [true, false] {
        let mut m = MemStreams::default();
        let mut input = data;
        if let Ok(d) =
            imgarc::format::decompose(detect::FormatKind::Vmdk, &mut input, with_len.then_some(data.len() as u64), &policy, &mut m)
        {
            assert!(m.guest.iter().all(|(&o, g)| o + g.len() as u64 <= d.virtual_size), "guest piece beyond the virtual size");
            let mut out = Vec::new();
            qcow2::rebuild(&d.recipe, &mut m, &mut out).expect("rebuild of an accepted vmdk");
            assert!(out == data, "vmdk rebuild not byte-exact");
        }
    }
}

/// Answers every read with zeros (guest) or a fixed pattern (literal).
struct Patterned;
impl qcow2::RebuildSource for Patterned {
    fn read_guest(&mut self, _: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn read_literal(&mut self, _: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0x5a);
        Ok(())
    }
}

/// An output that accepts at most `.0` more bytes, so a recipe claiming a huge file cannot run for long.
struct Capped(u64);
impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if b.len() as u64 > self.0 {
            return Err(std::io::Error::other("output cap"));
        }
        self.0 -= b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The recipe decoder and rebuild on arbitrary recipe bytes.
pub fn recipe(data: &[u8]) {
    if let Ok(r) = qcow2::decode_recipe(data) {
        let total = r.segments.iter().try_fold(0u64, |t, s| t.checked_add(s.len()));
        assert_eq!(total, Some(r.file_len), "segments do not add up to the file length");
    }
    let _ = qcow2::rebuild(data, &mut Patterned, &mut Capped(16 << 20));
}

/// Format detection and the declared-format decision.
pub fn format_detection(data: &[u8]) {
    let d = detect::detect(data);
    for declared in
        [None, Some("raw"), Some("qcow2"), Some("vmdk"), Some("vdi"), Some("vhd"), Some("vhdx"), Some("iso"), Some("qed"), Some("")]
    {
        let _ = detect::decide(declared, &d);
        let _ = detect::check_declared(declared, &d);
    }
}

/// Index objects: the raw bytes, and (so the JSON layer is reached) the bytes as JSON
/// compressed the way writers compress it. Accepted objects re-encode to an equal object.
pub fn index_object(data: &[u8]) {
    let compressed = zstd::bulk::compress(data, 1).expect("zstd compresses to memory");
    for bytes in [data, &compressed[..]] {
        if let Ok(obj) = IndexObject::decode(bytes, &pack::BlobLimits::default()) {
            let again = IndexObject::decode(&obj.encode(), &pack::BlobLimits::default()).expect("a decoded index object re-encodes");
            assert!(again == obj, "index object does not survive encode/decode");
            for p in &obj.packs {
                p.entries().for_each(drop);
            }
        }
    }
}

/// Pack trailer (footer + entries) and blob decoding, on the raw bytes and on the bytes with
/// the trailer digest recomputed (the fuzzer cannot forge BLAKE3). For an accepted pack,
/// every entry's blob is decoded from the bytes it points at.
pub fn pack_trailer_and_blobs(data: &[u8]) {
    for bytes in [data.to_vec(), with_trailer_digest(data)] {
        let Ok(entries) = pack::parse_pack(&bytes, &pack::BlobLimits::default(), None) else { continue };
        for e in entries {
            let start = e.offset as usize;
            let stored = bytes.get(start..start + e.stored_len as usize).expect("an accepted entry lies inside the pack");
            let _ = pack::decode_blob(&e, stored);
        }
    }
}

/// `data` with its footer's digest field replaced by the BLAKE3 of the entries region the
/// footer's count claims (unchanged when the count does not fit).
fn with_trailer_digest(data: &[u8]) -> Vec<u8> {
    let mut b = data.to_vec();
    if b.len() < pack::FOOTER_LEN {
        return b;
    }
    let f = b.len() - pack::FOOTER_LEN;
    let count = u32::from_le_bytes(b[f..f + 4].try_into().expect("4 bytes")) as usize;
    let Some(start) = count.checked_mul(pack::ENTRY_LEN).and_then(|n| f.checked_sub(n)) else { return b };
    let digest = *blake3::hash(&b[start..f]).as_bytes();
    b[f + 8..f + 40].copy_from_slice(&digest);
    b
}

/// Extent-list tree blobs. The first 16 bytes choose the stream size and the end of the
/// previous tree; accepted records must be sorted, disjoint and inside the stream.
pub fn extent_list(data: &[u8]) {
    let (size, after, records) = if data.len() >= 16 {
        (u64::from_le_bytes(data[..8].try_into().expect("8")), u64::from_le_bytes(data[8..16].try_into().expect("8")), &data[16..])
    } else {
        (u64::MAX, 0, data)
    };
    let mut out = Vec::new();
    if extents::decode(records, size, after, &mut out).is_ok() {
        let mut prev = after;
        for e in &out {
            assert!(e.len > 0 && e.offset >= prev && e.end() <= size, "accepted extent {e:?} breaks the list rules");
            prev = e.end();
        }
        assert!(extents::encode(&out) == records, "accepted extent list does not re-encode identically");
    }
}

/// The repository config, with its encryption fields: an accepted config is unencrypted with
/// unkeyed ids, or names a known AEAD with keyed ids; a project dedup scope only when encrypted.
pub fn config(data: &[u8]) {
    if let Ok(c) = Config::parse(data) {
        let again = serde_json::to_vec(&c).expect("config serializes");
        Config::parse(&again).expect("an accepted config re-parses");
        match c.cipher() {
            None => assert!(c.encryption == "none" && c.chunk_id == "blake3", "accepted {:?} / {:?}", c.encryption, c.chunk_id),
            Some(_) => assert_eq!(c.chunk_id, "blake3-keyed", "an encrypted config with unkeyed ids was accepted"),
        }
        assert!(c.cipher().is_some() || c.dedup_scope == repository::config::DedupScope::Repository);
        let limits = pack::BlobLimits::from_config(&c);
        assert_eq!(limits.sealed.is_some(), c.cipher().is_some(), "sealed limits follow the config's encryption");
    }
}

/// An in-memory backend, so repository read paths run on fuzz input without I/O.
#[derive(Debug, Default)]
struct MemBackend(Mutex<BTreeMap<String, Vec<u8>>>);

impl MemBackend {
    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend for MemBackend {
    fn location(&self) -> String {
        "memory".into()
    }
    fn put(&self, key: &str, data: &[u8]) -> BackendResult<()> {
        self.objects().insert(key.into(), data.to_vec());
        Ok(())
    }
    fn get(&self, key: &str) -> BackendResult<Vec<u8>> {
        self.objects().get(key).cloned().ok_or_else(|| BackendError::NotFound(key.into()))
    }
    fn get_range(&self, key: &str, offset: u64, length: u64) -> BackendResult<Vec<u8>> {
        let objects = self.objects();
        let o = objects.get(key).ok_or_else(|| BackendError::NotFound(key.into()))?;
        let range = usize::try_from(offset).ok().zip(usize::try_from(length).ok()).and_then(|(a, n)| Some(a..a.checked_add(n)?));
        range.and_then(|r| o.get(r)).map(<[u8]>::to_vec).ok_or_else(|| BackendError::Other {
            op: "get_range",
            key: key.into(),
            message: "range past the end".into(),
        })
    }
    fn size(&self, key: &str) -> BackendResult<u64> {
        self.objects().get(key).map(|o| o.len() as u64).ok_or_else(|| BackendError::NotFound(key.into()))
    }
    fn list(&self, prefix: &str) -> BackendResult<Vec<ObjectInfo>> {
        Ok(self
            .objects()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectInfo { key: k.clone(), size: v.len() as u64 })
            .collect())
    }
    fn delete(&self, key: &str) -> BackendResult<()> {
        self.objects().remove(key);
        Ok(())
    }
}

/// A fresh in-memory repository with a default config.
fn mem_repository() -> (Arc<MemBackend>, Repository) {
    let backend = Arc::new(MemBackend::default());
    let config = Config::new(1 << 20, 3).expect("default config");
    let repo = Repository::init(backend.clone(), config).expect("init in memory");
    (backend, repo)
}

/// Snapshot objects, read the way `restore`/`check` read them (stored under their own id).
pub fn snapshot(data: &[u8]) {
    let (backend, repo) = mem_repository();
    let id = Id::of(data);
    backend.put(&<Snapshot as RepoFile>::id_key(&id), data).expect("memory put");
    if let Ok(snap) = repo.load_snapshot(&id) {
        for s in snap.streams() {
            let _ = (s.size, s.trees.len(), s.extent_count);
        }
    }
}

/// Lock, prune-mark, deleted-upstream, drill-record and scratch-record objects: the same bytes stored as each of them and
/// read back through the repository's own readers.
pub fn lock_mark_upstream(data: &[u8]) {
    let (backend, repo) = mem_repository();
    backend.put("locks/fuzz", data).expect("memory put");
    let mark_key = <marks::PruneMark as RepoFile>::id_key(&Id::of(data));
    backend.put(&mark_key, data).expect("memory put");
    backend.put(&format!("{}fuzz", repository::upstream::PREFIX), data).expect("memory put");
    let drill_name = Id::of(data).to_hex();
    backend.put(&format!("{}{drill_name}", repository::drill::PREFIX), data).expect("memory put");
    backend.put(&format!("{}{drill_name}", repository::scratch::PREFIX), data).expect("memory put");
    if let Ok(locks) = repo.list_locks() {
        for (_, info) in locks {
            let _ = (info.started(), info.is_stale());
        }
    }
    let _ = repo.read_mark(&mark_key);
    let _ = repo.deleted_upstream();
    if let Ok(record) = repo.load_drill_record(&drill_name, None) {
        // An accepted record names a snapshot by a real id.
        assert!(Id::from_hex(&record.snapshot).is_some());
    }
    if let Ok(record) = repo.load_scratch_record(&drill_name, None) {
        // An accepted record never names a resource cleanup could not tell for imgarc's own.
        assert!(imgarc::scratch::is_scratch_name(&record.name), "{:?}", record.name);
    }
    let _ = repo.live_leases();
}

// ---- Encrypted repositories: what is parsed after a seal opens.

/// A field of the first test vector of format-spec/encryption.md §8.
fn vector_field(name: &str) -> &'static str {
    let spec = include_str!("../../format-spec/encryption.md");
    let prefix = format!("{name}: ");
    spec.lines().find_map(|l| l.strip_prefix(prefix.as_str())).map(str::trim).expect("a field of the §8 vectors")
}

/// The fixed full keys of the first test vector, so an input means the same on every run
/// (a crash reproduces) and sealed input opens.
fn fixed_keys() -> &'static imgarc::crypto::KeySet {
    static KEYS: std::sync::OnceLock<imgarc::crypto::KeySet> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| imgarc::crypto::KeySet::from_bytes(&hex_decode(vector_field("keyset"))).expect("the vector's keyset"))
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex")).collect()
}

fn encrypted_limits() -> pack::BlobLimits {
    let config = Config::new(64 << 10, 3).expect("config").with_encryption(Some(fixed_keys().cipher()));
    pack::BlobLimits::from_config(&config)
}

/// Associated data of a sealed blob (format-spec/encryption.md §4): `"imgarc blob\0" ‖ kind ‖ id`.
fn blob_aad(kind: pack::BlobKind, id: &Id) -> Vec<u8> {
    let mut aad = b"imgarc blob\0".to_vec();
    aad.push(kind as u8);
    aad.extend_from_slice(&id.0);
    aad
}

/// An encrypted pack: the input as a whole stored pack (sealed trailer expected), and the
/// input's tail as the *plaintext* of a trailer sealed with the fixed meta key behind a
/// valid header, footer and checksum, so entry parsing and validation after the seal run.
/// Every accepted entry's blob is opened with the full key.
pub fn sealed_pack(data: &[u8]) {
    let keys = fixed_keys();
    let limits = encrypted_limits();
    let open_all = |bytes: &[u8]| {
        let Ok(entries) = pack::parse_pack(bytes, &limits, Some(keys)) else { return };
        for e in entries {
            let start = e.offset as usize;
            let stored = bytes.get(start..start + e.stored_len as usize).expect("an accepted entry lies inside the pack");
            let _ = pack::open_blob(&e, stored, Some(keys));
        }
    };
    open_all(data);
    // First two bytes: how many 56-byte entries the tail holds; the bytes before them are the blobs region.
    if data.len() < 2 {
        return;
    }
    let count = (u16::from_le_bytes([data[0], data[1]]) as usize).min((data.len() - 2) / pack::ENTRY_LEN);
    let (blobs, entries) = data[2..].split_at(data.len() - 2 - count * pack::ENTRY_LEN);
    let mut p = pack::MAGIC.to_vec();
    p.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0]);
    p.extend_from_slice(blobs);
    let mut aad = b"imgarc pack entries\0".to_vec();
    aad.extend_from_slice(&(count as u32).to_le_bytes());
    let sealed = keys.seal_meta(&aad, entries);
    let digest = *blake3::hash(&sealed).as_bytes();
    p.extend_from_slice(&sealed);
    p.extend_from_slice(&(count as u32).to_le_bytes());
    p.extend_from_slice(&[0; 4]);
    p.extend_from_slice(&digest);
    p.extend_from_slice(pack::END_MAGIC);
    open_all(&p);
}

/// One sealed blob. The first 6 bytes choose the entry (kind, codec, raw_len); the rest is the
/// blob's plaintext (`scope_len ‖ scope ‖ codec bytes`), sealed to the fixed keys under the id
/// the data would have, so scope parsing, decompression and the id check after the seal run;
/// the same bytes are also opened as they are (a forged sealed blob).
pub fn sealed_blob(data: &[u8]) {
    let keys = fixed_keys();
    if data.len() < 6 {
        return;
    }
    let kind = if data[0] & 1 == 0 { pack::BlobKind::Data } else { pack::BlobKind::Tree };
    let codec = if data[1] & 1 == 0 { pack::Codec::None } else { pack::Codec::Zstd };
    let raw_len = u32::from_le_bytes(data[2..6].try_into().expect("4 bytes")) % ((1 << 20) + 1); // bounds the decompression buffer, as validate_entries does for real entries
    let plain = &data[6..];
    // The id the codec bytes would have if they were the raw blob after the scope: reached when codec is none.
    let scope_len = plain.first().map_or(0, |&n| n as usize);
    let body = plain.get(1 + scope_len..).unwrap_or(&[]);
    let id = match std::str::from_utf8(plain.get(1..1 + scope_len).unwrap_or(&[])) {
        Ok("") | Err(_) => keys.id_key().id_of(body),
        Ok(scope) => keys.project_id_key(scope).id_of(body),
    };
    // One sealer for the whole run, as one archive run has: X25519 once, not per input.
    static SEALER: std::sync::OnceLock<(imgarc::crypto::BlobSealer, imgarc::crypto::KeySet)> = std::sync::OnceLock::new();
    let (sealer, write_only) = SEALER.get_or_init(|| (keys.blob_sealer(), keys.write_only()));
    let sealed = sealer.seal(&blob_aad(kind, &id), plain);
    for stored in [&sealed[..], plain] {
        let entry = pack::PackEntry { id, kind, codec, raw_len, stored_len: stored.len() as u32, offset: pack::HEADER_LEN as u64 };
        if let Ok(raw) = pack::open_blob(&entry, stored, Some(keys)) {
            assert_eq!(raw.len(), raw_len as usize, "an accepted blob has its entry's length");
        }
        assert!(pack::open_blob(&entry, stored, Some(write_only)).is_err(), "a write-only key opened a blob");
    }
}

/// Key objects (`keys/<id>`): the JSON decoder, and `open` — only for objects whose KDF
/// parameters are tiny, so an iteration stays fast (the reader's own bounds on planted
/// parameters are tested in `crypto::keyfile`) — and the KeySet bytes a wrap holds.
pub fn key_object(data: &[u8]) {
    use imgarc::crypto::keyfile::KeyFile;
    if let Ok(file) = <KeyFile as RepoFile>::decode(data, &pack::BlobLimits::default()) {
        let p = file.kdf_params;
        if p.m_kib <= 256 && p.t <= 2 && p.p <= 2 {
            // The vector's password, repository and config: the vector's own key object opens all the way.
            let config = hex_decode(vector_field("config"));
            let password = imgarc::secret::Secret::new(vector_field("password"));
            let _ = file.open(&password, vector_field("repository_id"), &config);
        }
        let again = <KeyFile as RepoFile>::encode(&file).expect("a key object encodes");
        assert!(<KeyFile as RepoFile>::decode(&again, &pack::BlobLimits::default()).is_ok(), "an accepted key object re-decodes");
    }
    if let Some(keys) = imgarc::crypto::KeySet::from_bytes(data) {
        assert_eq!(&keys.to_bytes()[..], data, "accepted KeySet bytes re-encode identically");
    }
}

/// The S3 XML answers of an untrusted server (`backend::s3_lock`): GetObjectRetention,
/// GetObjectLockConfiguration, ListObjectVersions pages and error documents.
pub fn s3_xml(data: &[u8]) {
    use imgarc::backend::s3_lock::{parse_lock_configuration, parse_retention, parse_version_page, s3_error};
    use imgarc::backend::LockMode;
    let body = String::from_utf8_lossy(data);
    let e = s3_error(&body);
    assert!(e.chars().count() <= 300 && !e.chars().any(char::is_control), "error line {e:?}");
    match parse_retention(&body) {
        Ok(r) => assert_eq!(LockMode::from_s3(r.mode.as_s3()), Some(r.mode)),
        Err(m) => assert!(m.starts_with("unreadable retention document")),
    }
    let enabled = parse_lock_configuration(&body);
    assert!(!enabled || body.contains("Enabled"));
    // Each entry comes from one <Version> or <DeleteMarker> element.
    let elements = body.matches("<Version>").count() + body.matches("<DeleteMarker>").count();
    for (key_prefix, prefix) in [("", ""), ("p/", ""), ("p/", "data/"), ("", "data/"), ("data/", "data/")] {
        let page = parse_version_page(&body, key_prefix, prefix);
        assert!(page.versions.len() <= elements);
        // Versions first, then delete markers.
        assert!(page.versions.windows(2).all(|w| w[0].delete_marker <= w[1].delete_marker));
        for v in &page.versions {
            assert!(v.key.starts_with(prefix), "{:?} outside {prefix:?}", v.key);
        }
        // Relative to key_prefix: the same page read without one names the same entries, prefixed.
        let full = parse_version_page(&body, "", &format!("{key_prefix}{prefix}"));
        assert_eq!(full.versions.len(), page.versions.len());
        for (f, v) in full.versions.iter().zip(&page.versions) {
            assert_eq!(f.key, format!("{key_prefix}{}", v.key));
            assert_eq!((&f.version_id, f.is_latest, f.delete_marker, f.size), (&v.version_id, v.is_latest, v.delete_marker, v.size));
        }
        assert_eq!((full.truncated, &full.next_key_marker), (page.truncated, &page.next_key_marker));
        if !page.truncated {
            assert!(page.next_key_marker.is_empty() && page.next_version_marker.is_empty());
        }
    }
}

/// The VHDX decomposer, on the input itself and on a valid 5 MiB template (1 MiB blocks, BAT
/// at 1 MiB, metadata at 2 MiB, two payload blocks) whose structure bytes the input XORs:
/// `data[0]` bit 0 keeps the CRC-32C of headers and region tables as mutated (else they are
/// recomputed, so the fuzzer gets past them), bits 1-7 with `data[1..4]` pick a truncation;
/// `data[4..]` XORs the identifier, both headers, the region table, the BAT, the metadata
/// table and items, and the first payload bytes, in that order. Every accepted file must
/// rebuild byte-exactly.
pub fn vhdx(data: &[u8]) {
    let policy = qcow2::Policy { max_pending_ram: 8 << 20, max_virtual_size: 1 << 40, ..qcow2::Policy::default() };
    for file in [data.to_vec(), vhdx_file(data)] {
        for with_len in [true, false] {
            let mut m = MemStreams::default();
            if let Ok(d) = imgarc::format::vhdx::decompose(&mut &file[..], with_len.then_some(file.len() as u64), &policy, &mut m) {
                let mut out = Vec::new();
                qcow2::rebuild(&d.recipe, &mut m, &mut out).expect("rebuild of an accepted vhdx");
                assert!(out == file, "vhdx rebuild not byte-exact");
            }
        }
    }
}

/// The template file of [`vhdx`] with the input's mutations applied.
pub fn vhdx_file(data: &[u8]) -> Vec<u8> {
    const MIB: usize = 1 << 20;
    let mut f = vec![0u8; 5 * MIB];
    f[0..8].copy_from_slice(b"vhdxfile");
    let put = |f: &mut [u8], at: usize, b: &[u8]| f[at..at + b.len()].copy_from_slice(b);
    for (i, at) in [0x10000usize, 0x20000].into_iter().enumerate() {
        put(&mut f, at, b"head");
        put(&mut f, at + 8, &(5 + i as u64).to_le_bytes());
        put(&mut f, at + 66, &1u16.to_le_bytes());
        put(&mut f, at + 68, &(MIB as u32).to_le_bytes());
        put(&mut f, at + 72, &(4 * MIB as u64).to_le_bytes()); // log after the payload: 1 MiB
    }
    let bat_guid = [0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08];
    let meta_guid = [0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e];
    put(&mut f, 0x30000, b"regi");
    put(&mut f, 0x30008, &2u32.to_le_bytes());
    for (i, (g, off)) in [(bat_guid, MIB as u64), (meta_guid, 2 * MIB as u64)].into_iter().enumerate() {
        let e = 0x30010 + 32 * i;
        put(&mut f, e, &g);
        put(&mut f, e + 16, &off.to_le_bytes());
        put(&mut f, e + 24, &(MIB as u32).to_le_bytes());
        put(&mut f, e + 28, &1u32.to_le_bytes());
    }
    // BAT: block 0 at 3 MiB (a pattern), block 1 ZERO, block 2 NOT_PRESENT; the log fills 4-5 MiB.
    put(&mut f, MIB, &((3 * MIB as u64) | 6).to_le_bytes());
    put(&mut f, MIB + 8, &2u64.to_le_bytes());
    let m = 2 * MIB;
    put(&mut f, m, b"metadata");
    put(&mut f, m + 10, &5u16.to_le_bytes());
    let items: [([u8; 16], u32, Vec<u8>); 5] = [
        (
            [0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b],
            4,
            [MIB as u32, 0].iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        (
            [0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48, 0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8],
            6,
            (3 * MIB as u64).to_le_bytes().to_vec(),
        ),
        ([0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45, 0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46], 6, vec![7; 16]),
        (
            [0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47, 0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f],
            6,
            512u32.to_le_bytes().to_vec(),
        ),
        (
            [0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44, 0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56],
            6,
            4096u32.to_le_bytes().to_vec(),
        ),
    ];
    let mut off = 0x10000usize;
    for (i, (g, flags, d)) in items.iter().enumerate() {
        let e = m + 32 + 32 * i;
        put(&mut f, e, g);
        put(&mut f, e + 16, &(off as u32).to_le_bytes());
        put(&mut f, e + 20, &(d.len() as u32).to_le_bytes());
        put(&mut f, e + 24, &flags.to_le_bytes());
        put(&mut f, m + off, d);
        off += d.len();
    }
    for (i, b) in f[3 * MIB..4 * MIB].iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    let (ctl, rest) = data.split_first().map_or((0, &[][..]), |(c, r)| (*c, r));
    let (cut, xor) = rest.split_at(rest.len().min(3));
    let windows = [(0usize, 64usize), (0x10000, 96), (0x20000, 96), (0x30000, 112), (MIB, 64), (m, 224), (m + 0x10000, 48), (3 * MIB, 32)];
    let mut k = 0;
    'outer: for (at, n) in windows {
        for i in 0..n {
            let Some(x) = xor.get(k) else { break 'outer };
            f[at + i] ^= x;
            k += 1;
        }
    }
    if ctl & 1 == 0 {
        for (at, len) in [(0x10000usize, 4096usize), (0x20000, 4096), (0x30000, 0x10000), (0x40000, 0x10000)] {
            if at == 0x40000 {
                let t = f[0x30000..0x40000].to_vec();
                f[0x40000..0x50000].copy_from_slice(&t);
                continue;
            }
            f[at + 4..at + 8].fill(0);
            let c = imgarc::crc32c::crc32c(&f[at..at + len]);
            f[at + 4..at + 8].copy_from_slice(&c.to_le_bytes());
        }
    }
    if ctl >> 1 != 0 {
        let c = cut.iter().fold(0usize, |a, &b| a << 8 | b as usize) % f.len();
        f.truncate(c);
    }
    f
}

/// The input as a volume whose bytes past the input's end read as zeros, up to `size` (the
/// size a FAT boot sector claims, at most 4 GiB; ext4: 4 MiB): so a seed can be the first
/// 64 KiB of an image megabytes long. Nothing is allocated for the zeros.
struct ZeroTail<'a> {
    data: &'a [u8],
    size: u64,
}

impl imgarc::guest::ReadAt for ZeroTail<'_> {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        imgarc::guest::check_bounds(self.size, offset, buf.len())?;
        buf.fill(0);
        let have = self.data.len() as u64;
        if offset < have {
            let n = (have - offset).min(buf.len() as u64) as usize;
            buf[..n].copy_from_slice(&self.data[offset as usize..offset as usize + n]);
        }
        Ok(())
    }
}

/// The FAT reader: the input is the start of a volume (see [`ZeroTail`]); open it, walk the
/// tree (at most 1000 entries, depth 8) and read up to 64 KiB of every regular file, its data
/// map and its metadata.
pub fn fat(data: &[u8]) {
    use imgarc::guest::{fs::fat, FileType, Ino, ReadAt};
    let field = |at: usize, n: usize| data.get(at..at + n).map_or(0, |b| b.iter().rev().fold(0u64, |a, &x| a << 8 | u64::from(x)));
    let sectors = match field(19, 2) {
        0 => field(32, 4),
        n => n,
    };
    let claimed = (sectors * field(11, 2)).min(4 << 30);
    let bytes: Arc<dyn ReadAt + '_> = Arc::new(ZeroTail { data, size: claimed.max(data.len() as u64) });
    let Ok(Some(fs)) = fat::open(bytes) else { return };
    let _ = (fs.kind(), fs.label(), fs.notes());
    let mut budget = 1000usize;
    let mut stack: Vec<(Ino, usize)> = vec![(fs.root(), 0)];
    let mut buf = vec![0u8; 64 << 10];
    while let Some((dir, depth)) = stack.pop() {
        let _ = fs.metadata(dir);
        let _ = fs.data_map(dir);
        let Ok(entries) = fs.read_dir(dir) else { continue };
        for e in entries {
            if budget == 0 {
                return;
            }
            budget -= 1;
            if let Ok(md) = fs.metadata(e.ino) {
                assert_eq!(md.file_type, e.file_type, "a directory entry and its metadata disagree");
            }
            match e.file_type {
                FileType::Directory if depth < 8 => stack.push((e.ino, depth + 1)),
                FileType::Regular => {
                    if let Ok(Some(runs)) = fs.data_map(e.ino) {
                        // Runs are in file order, contiguous, and never holes.
                        let mut at = 0;
                        for r in runs {
                            assert!(r.file_offset == at && r.len > 0 && r.disk_offset.is_some(), "bad run {r:?}");
                            at += r.len;
                        }
                    }
                    let _ = fs.read(e.ino, 0, &mut buf);
                }
                _ => {}
            }
        }
    }
}

/// The NBD server's protocol state machine (`imgarc::nbd::proto`): the input is everything a
/// client sends (client flags, options, requests with payloads), read from memory, against a
/// small in-memory disk with holes. Replies are counted, not kept, so a client asking for
/// many large reads cannot grow memory here; the server itself must not either.
pub fn nbd(data: &[u8]) {
    use imgarc::nbd::proto::{self, Allocation, Export};
    struct Client<'a> {
        input: &'a [u8],
        replied: u64,
    }
    impl std::io::Read for Client<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.input.len());
            buf[..n].copy_from_slice(&self.input[..n]);
            self.input = &self.input[n..];
            Ok(n)
        }
    }
    impl std::io::Write for Client<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.replied += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    const SIZE: u64 = (256 << 10) + 77;
    static DISK: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let disk = DISK.get_or_init(|| (0..SIZE).map(|i| (i % 251) as u8 + 1).collect());
    let export = Export {
        names: vec![String::new(), "snap".into()],
        description: "fuzz disk".into(),
        size: SIZE,
        allocation: Allocation::from_pieces([(0, 4096), (65536, 70000), (200_000, 10), (SIZE - 5, 5)], SIZE),
    };
    let mut client = Client { input: data, replied: 0 };
    if let Ok(Some(negotiated)) = proto::handshake(&mut client, &export) {
        let _ = proto::transmission(&mut client, &export, disk, &negotiated);
    }
    // Every reply answers something the client sent: a read's data is at most the disk per request.
    let requests = data.len() as u64 / 28 + 1;
    assert!(client.replied <= 4096 + requests * (SIZE + 64 * 1024), "{} bytes of replies to {} input bytes", client.replied, data.len());
}

/// A sparse disk image described by the fuzz input, so that a seed can hold the few metadata
/// blocks of a real XFS (superblock, AG headers, inode chunk, directory blocks) that lie far
/// apart on a 300 MB image. Format (`XSPR` seeds, documented in docs/guest-files.md § XFS):
/// `"XSPR"`, u64 LE image size, then records `u64 LE offset, u32 LE length, bytes`; unlisted
/// bytes read as zeros. Any input not starting with `"XSPR"` is the image itself.
pub struct XfsFuzzImage {
    size: u64,
    pieces: Vec<(u64, Vec<u8>)>,
}

impl XfsFuzzImage {
    pub fn parse(data: &[u8]) -> XfsFuzzImage {
        let Some(rest) = data.strip_prefix(b"XSPR") else {
            return XfsFuzzImage { size: data.len() as u64, pieces: vec![(0, data.to_vec())] };
        };
        let le = |b: &[u8]| b.iter().rev().fold(0u64, |a, &x| a << 8 | x as u64);
        // Cap the claimed size (reads are sparse, but keep offsets sane): 1 TiB.
        let size = rest.get(..8).map_or(0, le).min(1 << 40);
        let mut at = rest.get(8..).unwrap_or(&[]);
        let mut pieces = Vec::new();
        while at.len() >= 12 {
            let off = le(&at[..8]);
            let len = (le(&at[8..12]) as usize).min(at.len() - 12);
            if off.checked_add(len as u64).is_some_and(|end| end <= size) {
                pieces.push((off, at[12..12 + len].to_vec()));
            }
            at = &at[12 + len..];
        }
        XfsFuzzImage { size, pieces }
    }
}

impl imgarc::guest::ReadAt for XfsFuzzImage {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        imgarc::guest::check_bounds(self.size, offset, buf.len())?;
        buf.fill(0);
        let end = offset + buf.len() as u64;
        for (o, d) in &self.pieces {
            let (s, e) = ((*o).max(offset), (o + d.len() as u64).min(end));
            if s < e {
                buf[(s - offset) as usize..(e - offset) as usize].copy_from_slice(&d[(s - o) as usize..(e - o) as usize]);
            }
        }
        Ok(())
    }
}

/// XFS: the input as a volume (raw or an `XSPR` sparse excerpt) → open → walk from the root
/// (≤ 1000 entries, depth ≤ 8), stat, read links, map and read ≤ 64 KiB of every file. Run twice:
/// as a reader opens it (every CRC checked) and with CRC checks off, so the fuzzer explores the
/// structures behind the checksums it cannot forge.
pub fn xfs(data: &[u8]) {
    use imgarc::guest::fs::xfs as x;
    let image: Arc<dyn imgarc::guest::ReadAt> = Arc::new(XfsFuzzImage::parse(data));
    for verify in [true, false] {
        let opened = if verify { x::open(image.clone()) } else { x::open_without_checksums(image.clone()) };
        let Ok(Some(fs)) = opened else { continue };
        let _ = (fs.kind(), fs.label(), fs.notes());
        let mut budget = 1000usize;
        let mut stack = vec![(fs.root(), 0usize)];
        while let Some((ino, depth)) = stack.pop() {
            let Ok(md) = fs.metadata(ino) else { continue };
            match md.file_type {
                imgarc::guest::FileType::Directory if depth < 8 => {
                    let Ok(entries) = fs.read_dir(ino) else { continue };
                    for e in entries {
                        if budget == 0 {
                            break;
                        }
                        budget -= 1;
                        stack.push((e.ino, depth + 1));
                    }
                }
                imgarc::guest::FileType::Symlink => {
                    let _ = fs.read_link(ino);
                }
                imgarc::guest::FileType::Regular => {
                    if let Ok(Some(runs)) = fs.data_map(ino) {
                        let mut next = 0u64;
                        for r in &runs {
                            assert_eq!(r.file_offset, next, "xfs data map not contiguous");
                            next = r.file_offset + r.len;
                        }
                        assert!(next >= md.size, "xfs data map ends before the file");
                    }
                    let mut buf = vec![0u8; 64 * 1024];
                    if let Ok(n) = fs.read(ino, 0, &mut buf) {
                        assert!(n <= buf.len() && n as u64 <= md.size, "xfs read returned more than the file");
                    }
                    let _ = fs.read(ino, md.size.saturating_sub(100), &mut buf[..4096]);
                }
                _ => {}
            }
        }
    }
}

/// `partition`: the bytes as a guest disk → its partition table and LVM2 volumes, then the
/// first and last byte of every volume (reads through the LV mapping). GPT and LVM checksums are
/// what a crafted disk computes itself; the seeds carry valid ones.
pub fn partition(data: &[u8]) {
    use imgarc::guest::{volume, ReadAt};
    let disk: Arc<dyn ReadAt> = Arc::new(data.to_vec());
    if let Ok(layout) = volume::layout(disk) {
        for v in &layout.volumes {
            let mut b = [0u8; 1];
            if let Some(last) = v.bytes.size().checked_sub(1) {
                let _ = v.bytes.read_at(0, &mut b);
                let _ = v.bytes.read_at(last, &mut b);
            }
        }
    }
}

/// `lvm`: first byte even → the rest is LVM2 metadata text, parsed and mapped as the VG of a
/// PV (the first one it lists) over 4 MiB of zeros, one byte of each LV read; odd → the rest is a
/// PV's first bytes, its label, `mda_header` and text checksums recomputed (so mutations reach
/// the structures behind them), probed and its LVs mapped.
pub fn lvm(data: &[u8]) {
    use imgarc::guest::volume::lvm;
    use imgarc::guest::ReadAt;
    let Some((&ctl, rest)) = data.split_first() else { return };
    let read_one = |vols: Vec<(usize, imgarc::guest::Volume)>| {
        for (_, v) in vols {
            let mut b = [0u8; 1];
            if v.bytes.size() > 0 {
                let _ = v.bytes.read_at(v.bytes.size() / 2, &mut b);
            }
        }
    };
    if ctl & 1 == 0 {
        let Ok(top) = lvm::config::parse(rest) else { return };
        let uuid = top
            .sections()
            .find_map(|(_, vg)| vg.section("physical_volumes")?.sections().next()?.1.str("id").map(|s| s.replace('-', "")))
            .unwrap_or_default();
        let disk: Arc<dyn ReadAt> = Arc::new(vec![0u8; 4 << 20]);
        if let Ok(pv) = lvm::pv_from_text(0, 4 << 20, uuid, rest) {
            if let Ok(vols) = lvm::logical_volumes(&disk, &[&pv], &mut Vec::new()) {
                read_one(vols);
            }
        }
        return;
    }
    let mut b = rest.to_vec();
    let le64 = |b: &[u8], at: usize| b.get(at..at + 8).map_or(0, |s| u64::from_le_bytes(s.try_into().expect("8 bytes")));
    for s in 0..4usize {
        let at = s * 512;
        if b.get(at..at + 8) != Some(&b"LABELONE"[..]) || b.len() < at + 512 {
            continue;
        }
        // The PV header's metadata areas: after the UUID, size and data area list.
        let h = at + (u32::from_le_bytes(b[at + 20..at + 24].try_into().expect("4 bytes")) as usize).min(472);
        let mut pos = h + 40;
        while pos + 16 <= at + 512 && (le64(&b, pos) != 0 || le64(&b, pos + 8) != 0) {
            pos += 16;
        }
        pos += 16;
        while pos + 16 <= at + 512 && (le64(&b, pos) != 0 || le64(&b, pos + 8) != 0) {
            let (mda, size) = (le64(&b, pos) as usize, le64(&b, pos + 8) as usize);
            pos += 16;
            if mda.checked_add(512).is_none_or(|e| e > b.len()) {
                continue;
            }
            let (t_off, t_size) = (le64(&b, mda + 40) as usize, le64(&b, mda + 48) as usize);
            let text = mda.saturating_add(t_off);
            if t_off < size && text.checked_add(t_size).is_some_and(|e| e <= b.len()) {
                let c = lvm::lvm_crc(&b[text..text + t_size]);
                b[mda + 56..mda + 60].copy_from_slice(&c.to_le_bytes());
            }
            let c = lvm::lvm_crc(&b[mda + 4..mda + 512]);
            b[mda..mda + 4].copy_from_slice(&c.to_le_bytes());
        }
        let c = lvm::lvm_crc(&b[at + 20..at + 512]);
        b[at + 16..at + 20].copy_from_slice(&c.to_le_bytes());
        break;
    }
    let len = b.len() as u64;
    let disk: Arc<dyn ReadAt> = Arc::new(b);
    if let Ok(Some(pv)) = lvm::probe(&*disk, 0, len) {
        if let Ok(vols) = lvm::logical_volumes(&disk, &[&pv], &mut Vec::new()) {
            read_one(vols);
        }
    }
}

/// ext2/3/4 (`guest::fs::ext4`): the input as a volume, opened (journal replay
/// included) and walked, bounded: at most 1000 entries, depth 8, reading at
/// most 64 KiB of each file and each link target, and every data map.
pub fn ext4(data: &[u8]) {
    use imgarc::guest::{FileType, Filesystem, ReadAt};
    fn walk(fs: &dyn Filesystem, ino: u64, depth: u32, budget: &mut usize, buf: &mut [u8]) {
        if depth > 8 {
            return;
        }
        let Ok(entries) = fs.read_dir(ino) else { return };
        for e in entries {
            if *budget == 0 {
                return;
            }
            *budget -= 1;
            if let Ok(md) = fs.metadata(e.ino) {
                if let Ok(Some(runs)) = fs.data_map(e.ino) {
                    // Runs tile [0, size) in order.
                    let mut at = 0u64;
                    for r in &runs {
                        assert_eq!(r.file_offset, at);
                        at += r.len;
                    }
                    assert!(runs.is_empty() || at == md.size);
                }
                if let Ok(n) = fs.read(e.ino, 0, buf) {
                    assert!(n <= buf.len());
                }
                let _ = fs.read(e.ino, md.size.saturating_sub(100), &mut buf[..4096]);
            }
            let _ = fs.read_link(e.ino);
            if e.file_type == FileType::Directory {
                walk(fs, e.ino, depth + 1, budget, buf);
            }
        }
    }
    let size = (data.len() as u64).max(4 << 20);
    let volume: Arc<dyn ReadAt + '_> = Arc::new(ZeroTail { data, size });
    let Ok(Some(fs)) = imgarc::guest::fs::ext4::open(volume) else { return };
    let _ = (fs.kind(), fs.label(), fs.notes());
    let mut buf = vec![0u8; 64 << 10];
    let mut budget = 1000;
    walk(fs.as_ref(), fs.root(), 0, &mut budget, &mut buf);
}

/// The boot drill's serial-console watcher (`drill::boot::watch_console`), on what a guest
/// prints: split into reads at the first byte's offset, against the default `--expect`. The
/// tail a record keeps must stay bounded and free of control characters.
pub fn console(data: &[u8]) {
    static EXPECT: std::sync::OnceLock<regex_lite::Regex> = std::sync::OnceLock::new();
    let expect = EXPECT.get_or_init(|| imgarc::drill::boot::compile_expect(None).expect("the default --expect"));
    let cut = data.first().map_or(0, |b| *b as usize).min(data.len());
    let (_, tail) = imgarc::drill::boot::watch_console(&[&data[..cut], &data[cut..]], expect);
    assert!(tail.len() <= repository::drill::MAX_CONSOLE_TAIL);
    assert!(tail.chars().all(|c| !c.is_control() || c == '\n' || c == '\t'));
}

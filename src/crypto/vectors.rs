//! The test vectors of format-spec/encryption.md §8, checked against the code:
//! the vectors are read from the spec itself (so the bytes the spec shows are
//! the bytes tested and cannot rot), and each must open to exactly what it
//! says with the code as it is. `generate` (ignored) printed them once.

use super::keyfile::{KdfParams, KeyFile};
use super::keyset::KeySet;
use super::Cipher;
use crate::ids::{Id, IdKey};
use crate::repository::pack::{self, BlobKind, Codec, PackEntry};
use crate::secret::Secret;
use std::collections::BTreeMap;

const SPEC: &str = include_str!("../../format-spec/encryption.md");

/// Every fenced block of §8 that starts with `vector:`, as its `name: value` lines.
fn spec_vectors() -> Vec<BTreeMap<String, String>> {
    let section = SPEC.split("## 8. Test vectors").nth(1).expect("format-spec/encryption.md has §8");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .split("```")
        .skip(1)
        .step_by(2)
        .filter_map(|block| {
            let fields: BTreeMap<String, String> =
                block.lines().filter_map(|l| l.split_once(": ")).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
            fields.contains_key("vector").then_some(fields)
        })
        .collect()
}

fn hex_field(v: &BTreeMap<String, String>, k: &str) -> Vec<u8> {
    hex::decode(&v[k]).unwrap_or_else(|e| panic!("vector {}: {k} is not hex: {e}", v["vector"]))
}

/// The KDF parameters of `m_kib=64 t=1 p=1`.
fn kdf(s: &str) -> KdfParams {
    let num = |name: &str| -> u32 {
        let field = s.split_whitespace().find_map(|f| f.strip_prefix(&format!("{name}="))).expect("kdf field");
        field.parse().expect("kdf number")
    };
    KdfParams { m_kib: num("m_kib"), t: num("t"), p: num("p") }
}

#[test]
fn the_spec_vectors_open_to_what_they_say() {
    let vectors = spec_vectors();
    let ciphers: Vec<&str> = vectors.iter().map(|v| v["vector"].as_str()).collect();
    assert_eq!(ciphers, ["aes-256-gcm", "xchacha20-poly1305"], "§8 has one vector per cipher");
    for v in &vectors {
        let name = &v["vector"];
        let cipher = Cipher::from_name(name).expect("a cipher name");

        // Password + key object (+ the config it is bound to) → KeySet bytes.
        let file: KeyFile = serde_json::from_str(&v["key_object"]).expect("key object JSON");
        assert_eq!(file.kdf_params, kdf(&v["kdf"]), "{name}: the stated KDF parameters are the object's");
        let config = hex_field(v, "config");
        let parsed = crate::repository::config::Config::parse(&config).expect("the vector's config parses");
        assert_eq!(parsed.cipher(), Some(cipher));
        assert_eq!(parsed.id, v["repository_id"]);
        let keys = file.open(&Secret::new(v["password"].clone()), &v["repository_id"], &config).unwrap().expect("the password opens it");
        assert_eq!(&keys.to_bytes()[..], &hex_field(v, "keyset")[..], "{name}: KeySet bytes");
        assert!(file.open(&Secret::new("not the password"), &v["repository_id"], &config).unwrap().is_none());
        assert_eq!(keys.cipher(), cipher);

        // Keyed id: BLAKE3 keyed with id_key (bytes 2..34 of the KeySet).
        let id_key: [u8; 32] = hex_field(v, "id_key").try_into().unwrap();
        assert_eq!(&hex_field(v, "keyset")[2..34], &id_key[..]);
        let id = IdKey::keyed(id_key).id_of(&hex_field(v, "id_data"));
        assert_eq!(id.to_hex(), v["id"], "{name}: keyed id");
        assert_eq!(keys.id_key().id_of(&hex_field(v, "id_data")), id);

        // A sealed small object: meta key + AAD + stored bytes → plaintext.
        let meta = keys.open_meta(&hex_field(v, "meta_aad"), &hex_field(v, "meta_sealed")).expect("the small object opens");
        assert_eq!(meta, hex_field(v, "meta_plain"), "{name}: small object plaintext");
        assert_eq!(&hex_field(v, "meta_aad")[..], b"imgarc object\0index/", "{name}: the AAD of an index object");
        let mut changed = hex_field(v, "meta_sealed");
        changed[0] ^= 1;
        assert!(keys.open_meta(&hex_field(v, "meta_aad"), &changed).is_err());

        // A sealed blob: entry + stored bytes → plaintext (opened, scope checked, id verified).
        let stored = hex_field(v, "blob_stored");
        let entry = PackEntry {
            id: Id::from_hex(&v["blob_id"]).expect("blob id"),
            kind: BlobKind::Data,
            codec: Codec::None,
            raw_len: v["blob_raw_len"].parse().unwrap(),
            stored_len: stored.len() as u32,
            offset: pack::HEADER_LEN as u64,
        };
        let plain = pack::open_blob(&entry, &stored, Some(&keys)).expect("the blob opens");
        assert_eq!(plain, hex_field(v, "blob_plain"), "{name}: blob plaintext");
        assert_eq!(keys.open_blob(&hex_field(v, "blob_aad"), &stored).unwrap(), [&[0u8][..], &plain].concat(), "scope_len 0, no scope");
        assert!(pack::open_blob(&entry, &stored, Some(&keys.write_only())).is_err(), "a write-only key opens no blob");
    }
}

/// Prints a fresh §8 (random keys): `cargo test --lib crypto::vectors::generate -- --ignored --nocapture`.
/// The spec's vectors were made with it once; do not regenerate them without a format change.
#[test]
#[ignore]
fn generate() {
    const KDF: KdfParams = KdfParams { m_kib: 64, t: 1, p: 1 };
    for cipher in Cipher::ALL {
        let config = crate::repository::config::Config::new(64 << 10, 3).unwrap().with_encryption(Some(cipher));
        let config_bytes = serde_json::to_vec_pretty(&config).unwrap();
        let keys = KeySet::generate(cipher);
        let password = "imgarc test vector password";
        let file = KeyFile::create(&keys, super::KeyKind::Full, &Secret::new(password), KDF, "vector", &config.id, &config_bytes).unwrap();
        let id_data = b"imgarc test vector chunk".to_vec();
        let meta_aad = b"imgarc object\0index/".to_vec();
        let meta_plain = br#"{"version":1,"packs":[]}"#.to_vec();
        let meta_sealed = keys.seal_meta(&meta_aad, &meta_plain);
        let writer = pack::BlobWriter::sealed(3, &keys, keys.id_key(), "").unwrap();
        let blob_plain = b"a chunk of guest data, sealed to the data public key".to_vec();
        let blob = writer.encode(BlobKind::Data, &blob_plain);
        assert_eq!(blob.codec, Codec::None);
        let mut blob_aad = b"imgarc blob\0".to_vec();
        blob_aad.push(0);
        blob_aad.extend_from_slice(&blob.id.0);
        println!("```text");
        println!("vector: {}", cipher.name());
        println!("password: {password}");
        println!("kdf: m_kib={} t={} p={}", KDF.m_kib, KDF.t, KDF.p);
        println!("repository_id: {}", config.id);
        println!("config: {}", hex::encode(&config_bytes));
        println!("key_object: {}", serde_json::to_string(&file).unwrap());
        println!("keyset: {}", hex::encode(&keys.to_bytes()[..]));
        println!("id_key: {}", hex::encode(&keys.to_bytes()[2..34]));
        println!("id_data: {}", hex::encode(&id_data));
        println!("id: {}", keys.id_key().id_of(&id_data).to_hex());
        println!("meta_aad: {}", hex::encode(&meta_aad));
        println!("meta_sealed: {}", hex::encode(&meta_sealed));
        println!("meta_plain: {}", hex::encode(&meta_plain));
        println!("blob_id: {}", blob.id.to_hex());
        println!("blob_raw_len: {}", blob.raw_len);
        println!("blob_aad: {}", hex::encode(&blob_aad));
        println!("blob_stored: {}", hex::encode(&blob.stored));
        println!("blob_plain: {}", hex::encode(&blob_plain));
        println!("```");
    }
}

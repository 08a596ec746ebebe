//! The local-directory backend: one file per object under a root directory.
//!
//! Writes go to a temporary file in `tmp/` that is fsynced and then renamed
//! into place, so a reader (or a crash) never sees half an object. The
//! directory holding the new name is fsynced too, so a completed `put`
//! survives power loss.

use super::{Backend, BackendError, BackendResult, ObjectInfo};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> BackendResult<PathBuf> {
        // Keys come from the repository code, never from users, but a key that
        // could climb out of the root would be a bug worth refusing loudly.
        if key.is_empty() || key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(BackendError::Other { op: "resolve", key: key.to_string(), message: "invalid object key".into() });
        }
        Ok(self.root.join(key))
    }
}

fn io_err(op: &'static str, key: &str, e: std::io::Error) -> BackendError {
    if e.kind() == ErrorKind::NotFound {
        BackendError::NotFound(key.to_string())
    } else {
        BackendError::Io { op, key: key.to_string(), source: e }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, key: &str, data: &[u8]) -> BackendResult<()> {
        let path = self.path(key)?;
        let tmp_dir = self.root.join("tmp");
        let werr = |e| BackendError::Io { op: "write", key: key.to_string(), source: e };
        fs::create_dir_all(&tmp_dir).map_err(werr)?;
        let tmp = tmp_dir.join(format!("{}.{}", std::process::id(), hex::encode(rand::random::<[u8; 8]>())));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            drop(f);
            let parent = path.parent().expect("object keys always have a parent under root");
            fs::create_dir_all(parent)?;
            fs::rename(&tmp, &path)?;
            sync_dir(parent)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(werr)
    }

    fn get(&self, key: &str) -> BackendResult<Vec<u8>> {
        fs::read(self.path(key)?).map_err(|e| io_err("read", key, e))
    }

    fn get_range(&self, key: &str, offset: u64, length: u64) -> BackendResult<Vec<u8>> {
        let mut f = File::open(self.path(key)?).map_err(|e| io_err("read", key, e))?;
        let len = usize::try_from(length).map_err(|_| BackendError::Other {
            op: "read",
            key: key.to_string(),
            message: format!("range length {length} too large"),
        })?;
        let mut buf = vec![0u8; len];
        f.seek(SeekFrom::Start(offset)).and_then(|_| f.read_exact(&mut buf)).map_err(|e| match e.kind() {
            ErrorKind::UnexpectedEof => BackendError::Other {
                op: "read",
                key: key.to_string(),
                message: format!("range {offset}+{length} is past the end of the object"),
            },
            _ => io_err("read", key, e),
        })?;
        Ok(buf)
    }

    fn size(&self, key: &str) -> BackendResult<u64> {
        fs::metadata(self.path(key)?).map(|m| m.len()).map_err(|e| io_err("stat", key, e))
    }

    fn list(&self, prefix: &str) -> BackendResult<Vec<ObjectInfo>> {
        // Walk the directory that contains the prefix, then filter by the full prefix.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() { self.root.clone() } else { self.path(dir_part)? };
        let mut out = Vec::new();
        let mut stack = vec![(start, dir_part.to_string())];
        while let Some((dir, key_prefix)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("list", &key_prefix, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io_err("list", &key_prefix, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let key = if key_prefix.is_empty() { name } else { format!("{key_prefix}/{name}") };
                if key == "tmp" {
                    continue; // in-flight writes are not objects
                }
                let meta = entry.metadata().map_err(|e| io_err("list", &key, e))?;
                if meta.is_dir() {
                    stack.push((entry.path(), key));
                } else if key.starts_with(prefix) {
                    out.push(ObjectInfo { key, size: meta.len() });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> BackendResult<()> {
        match fs::remove_file(self.path(key)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("delete", key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_range_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        b.put("data/ab/abc", b"hello world").unwrap();
        b.put("index/x", b"i").unwrap();
        assert_eq!(b.get("data/ab/abc").unwrap(), b"hello world");
        assert_eq!(b.get_range("data/ab/abc", 6, 5).unwrap(), b"world");
        assert!(b.get_range("data/ab/abc", 6, 6).is_err());
        assert_eq!(b.size("data/ab/abc").unwrap(), 11);
        let keys: Vec<_> = b.list("data/").unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, vec!["data/ab/abc"]);
        assert_eq!(b.list("").unwrap().len(), 2);
        assert!(b.get("data/ab/nope").unwrap_err().is_not_found());
        b.delete("data/ab/abc").unwrap();
        b.delete("data/ab/abc").unwrap();
        assert!(b.list("data/").unwrap().is_empty());
        assert!(b.put("../escape", b"x").is_err());
    }
}

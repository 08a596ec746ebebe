//! The local-directory backend: one file per object under a root directory.
//!
//! Writes go to a temporary file in `tmp/` that is fsynced and then renamed
//! into place, so a reader (or a crash) never sees half an object. The
//! directory holding the new name is fsynced too, and so is the parent of
//! every directory a write creates, so a completed `put` survives power loss;
//! a `delete` fsyncs the directory it removed the name from. Temporary files
//! a killed writer left in `tmp/` are removed once they are old.
//!
//! Objects are created 0600 and directories 0700 whatever the umask: a
//! repository holds whole disk images.

use super::{Backend, BackendError, BackendResult, DeletePermission, ObjectInfo};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, SystemTime};

/// Mode of every object file the backend creates.
pub const OBJECT_MODE: u32 = crate::util::PRIVATE_FILE_MODE;
/// Mode of every directory the backend creates, the root included.
pub const DIR_MODE: u32 = crate::util::PRIVATE_DIR_MODE;
/// A file in `tmp/` untouched this long belongs to a writer that died: no
/// single object takes an hour to write.
const TMP_STALE_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    tmp_cleaned: Once,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend { root: root.into(), tmp_cleaned: Once::new() }
    }

    /// Creates `dir` (the root or a directory below it) and its missing
    /// parents up to the root, each `DIR_MODE`, fsyncing the parent of every
    /// directory created so its entry is as durable as the files put in it.
    fn create_dir_durable(&self, dir: &Path) -> std::io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if dir == self.root {
            // Above the root is the operator's tree, not ours: default modes.
            fs::create_dir_all(parent)?;
        } else {
            self.create_dir_durable(parent)?;
        }
        match DirBuilder::new().mode(DIR_MODE).create(dir) {
            Ok(()) => sync_dir(parent),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes files in `tmp/` that no live writer can still be filling
    /// (best effort: a failure here never fails the write that triggered it).
    fn remove_stale_tmp(&self, tmp_dir: &Path) {
        let Ok(entries) = fs::read_dir(tmp_dir) else { return };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let stale =
                entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > TMP_STALE_AFTER));
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> BackendResult<PathBuf> {
        // Keys come from the repository code, never from users, but a key that
        // could climb out of the root would be a bug worth refusing loudly.
        super::check_key_segments("resolve", key)?;
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
        self.create_dir_durable(&tmp_dir).map_err(werr)?;
        self.tmp_cleaned.call_once(|| self.remove_stale_tmp(&tmp_dir));
        let tmp = tmp_dir.join(format!("{}.{}", std::process::id(), hex::encode(rand::random::<[u8; 8]>())));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).mode(OBJECT_MODE).open(&tmp)?;
            crate::util::write_all_in_pieces(&mut f, data)?;
            f.sync_all()?;
            drop(f);
            let parent = path.parent().expect("object keys always have a parent under root");
            self.create_dir_durable(parent)?;
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
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            // The removal is durable only once the directory is.
            Ok(()) => sync_dir(path.parent().expect("object keys always have a parent under root")).map_err(|e| io_err("delete", key, e)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("delete", key, e)),
        }
    }

    /// Removing a file needs write access to its directory. Unlinking a missing file proves
    /// nothing (ENOENT comes before EACCES), so every directory objects live in is asked
    /// (`faccessat`, effective ids): the root and two levels below it (`data/ab/`, `upstream/deleted/`).
    fn can_delete(&self) -> BackendResult<DeletePermission> {
        let mut dirs = vec![self.root.clone()];
        let mut level = vec![self.root.clone()];
        for _ in 0..2 {
            let mut next = Vec::new();
            for dir in &level {
                let Ok(entries) = fs::read_dir(dir) else { continue };
                next.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
            }
            next.sort();
            dirs.extend(next.iter().cloned());
            level = next;
        }
        for dir in dirs {
            match writable(&dir) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM | libc::EROFS)) => {
                    return Ok(DeletePermission::Denied(format!("the directory {} is not writable ({e})", dir.display())))
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(BackendError::Io { op: "delete", key: dir.display().to_string(), source: e }),
            }
        }
        Ok(DeletePermission::Allowed)
    }
}

/// Whether this process may create and remove names in `dir` (write and search access).
#[allow(unsafe_code)] // faccessat(2): std has no access check by effective ids
fn writable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call; faccessat only reads it.
    let rc = unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK | libc::X_OK, libc::AT_EACCESS) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
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

    #[test]
    #[allow(unsafe_code)] // umask, set and put back
    fn objects_and_directories_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let b = LocalBackend::new(&root);
        // SAFETY: umask is process-wide, but only this test's modes depend on it.
        let old = unsafe { libc::umask(0o022) };
        b.put("config", b"{}").unwrap();
        b.put("data/ab/abcd", b"pack").unwrap();
        unsafe { libc::umask(old) };
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for d in [root.clone(), root.join("data"), root.join("data/ab"), root.join("tmp")] {
            assert_eq!(mode(&d), DIR_MODE, "{}", d.display());
        }
        for f in [root.join("config"), root.join("data/ab/abcd")] {
            assert_eq!(mode(&f), OBJECT_MODE, "{}", f.display());
        }
    }

    #[test]
    fn stale_temporary_files_are_removed_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(&tmp).unwrap();
        let old = tmp.join("1.dead");
        let fresh = tmp.join("2.live");
        fs::write(&old, b"half a pack").unwrap();
        fs::write(&fresh, b"being written").unwrap();
        let long_ago = SystemTime::now() - 2 * TMP_STALE_AFTER;
        File::options().write(true).open(&old).unwrap().set_modified(long_ago).unwrap();
        let b = LocalBackend::new(dir.path());
        b.put("index/x", b"i").unwrap();
        assert!(!old.exists(), "a temporary file a dead writer left is still there");
        assert!(fresh.exists(), "a live writer's temporary file was removed");
        assert_eq!(b.list("").unwrap().len(), 1);
    }
}

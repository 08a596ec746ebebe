//! A small in-memory filesystem for the unit tests of path resolution and
//! walks (crafted shapes a real mke2fs cannot make: symlink loops, a
//! directory that contains itself). The integration tests use real images.

use crate::guest::{DirEntry, FileRun, FileType, Filesystem, FsError, Ino, Metadata, Timestamp};
use std::collections::BTreeMap;

pub const ROOT: Ino = 2;
pub const DIR: Ino = 10;
pub const FILE: Ino = 11;
pub const LINK_TO_DIR: Ino = 12;
pub const LINK_TO_FILE: Ino = 13;
pub const LOOP: Ino = 14;

pub struct TestFs {
    pub files: BTreeMap<Ino, (Metadata, Vec<u8>)>,
    pub dirs: BTreeMap<Ino, Vec<DirEntry>>,
}

fn meta(ino: Ino, t: FileType, size: u64) -> Metadata {
    Metadata {
        ino,
        file_type: t,
        mode: 0o755,
        uid: 0,
        gid: 0,
        size,
        nlink: 1,
        atime: Timestamp::default(),
        mtime: Timestamp { secs: 1_700_000_000, nanos: 0 },
        ctime: Timestamp::default(),
        rdev: None,
    }
}

fn entry(name: &str, ino: Ino, file_type: FileType) -> DirEntry {
    DirEntry { name: name.as_bytes().to_vec(), ino, file_type }
}

impl TestFs {
    /// `/dir/file`, `/link-to-dir -> dir`, `/link-to-file -> /dir/file`, `/loop -> loop`, `/dir/again` = `/dir`.
    pub fn sample() -> TestFs {
        let mut files = BTreeMap::new();
        files.insert(ROOT, (meta(ROOT, FileType::Directory, 4096), Vec::new()));
        files.insert(DIR, (meta(DIR, FileType::Directory, 4096), Vec::new()));
        files.insert(FILE, (meta(FILE, FileType::Regular, 5), b"hello".to_vec()));
        files.insert(LINK_TO_DIR, (meta(LINK_TO_DIR, FileType::Symlink, 3), b"dir".to_vec()));
        files.insert(LINK_TO_FILE, (meta(LINK_TO_FILE, FileType::Symlink, 9), b"/dir/file".to_vec()));
        files.insert(LOOP, (meta(LOOP, FileType::Symlink, 4), b"loop".to_vec()));
        let mut dirs = BTreeMap::new();
        dirs.insert(
            ROOT,
            vec![
                entry("dir", DIR, FileType::Directory),
                entry("link-to-dir", LINK_TO_DIR, FileType::Symlink),
                entry("link-to-file", LINK_TO_FILE, FileType::Symlink),
                entry("loop", LOOP, FileType::Symlink),
            ],
        );
        dirs.insert(DIR, vec![entry("file", FILE, FileType::Regular), entry("again", DIR, FileType::Directory)]);
        TestFs { files, dirs }
    }

    fn get(&self, ino: Ino) -> Result<&(Metadata, Vec<u8>), FsError> {
        self.files.get(&ino).ok_or_else(|| FsError::Malformed(format!("inode {ino}")))
    }
}

impl Filesystem for TestFs {
    fn kind(&self) -> &'static str {
        "testfs"
    }
    fn label(&self) -> Option<String> {
        None
    }
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    fn root(&self) -> Ino {
        ROOT
    }
    fn metadata(&self, ino: Ino) -> Result<Metadata, FsError> {
        Ok(self.get(ino)?.0.clone())
    }
    fn read_dir(&self, ino: Ino) -> Result<Vec<DirEntry>, FsError> {
        self.dirs.get(&ino).cloned().ok_or_else(|| FsError::NotADirectory(format!("inode {ino}")))
    }
    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        let data = &self.get(ino)?.1;
        let start = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }
    fn read_link(&self, ino: Ino) -> Result<Vec<u8>, FsError> {
        Ok(self.get(ino)?.1.clone())
    }
    fn data_map(&self, _ino: Ino) -> Result<Option<Vec<FileRun>>, FsError> {
        Ok(None)
    }
}

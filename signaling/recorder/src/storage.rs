//! Where the recorder's bytes go: the file system, or a test's writer that fails on purpose.

use std::fmt::Debug;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// A file being written.
pub trait Sink: Write + Send {
    /// Makes what was written durable (the file's data reaches the disk, not only the OS).
    fn sync(&mut self) -> io::Result<()>;
}

/// Creates the recorder's files. [`FsStorage`] is the real one; tests inject failures here.
pub trait Storage: Debug + Send + Sync {
    /// Creates a new file; it is an error if it exists, so a recording never overwrites another.
    fn create(&self, path: &Path) -> io::Result<Box<dyn Sink>>;
    /// Replaces a small file atomically, so a reader (recovery after a crash) sees either the
    /// old or the new content, never half of each.
    fn replace(&self, path: &Path, contents: &[u8]) -> io::Result<()>;
}

/// The local file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsStorage;

impl Sink for fs::File {
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

impl Storage for FsStorage {
    fn create(&self, path: &Path) -> io::Result<Box<dyn Sink>> {
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(file))
    }

    fn replace(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        replace_file(path, contents)
    }
}

/// Writes `contents` to a temporary file beside `path`, makes it durable, renames it over
/// `path` and makes the rename durable.
pub(crate) fn replace_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Without syncing the directory the rename itself may be lost in a power cut.
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

//! Files readable by their owner only (mode 0600): a SQLite ledger and its lock, and the export
//! files that hold secrets. It only opens files; it must never write or interpret them.

use std::fs::{File, OpenOptions};
use std::path::Path;

/// Opens (creating if needed) a file readable by its owner only.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

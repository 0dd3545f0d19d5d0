//! Files readable by their owner only (mode 0600): a SQLite ledger, its side files and its lock,
//! and the export files that hold secrets. It only opens, checks and renames files; it must never
//! write or interpret their content.
//!
//! Two ways in, for two kinds of file:
//! - a file that lives on (the ledger and its side files: [`check_private`]; its lock:
//!   [`open_private`]) is never taken through a symbolic link and kept only if it is a regular
//!   file of the invoking user with one name; an existing one is set to 0600, whatever mode it
//!   was planted with;
//! - a file written whole ([`Replacement`]: exports, certificate lists, credential dumps) is
//!   written to a fresh 0600 file created exclusively in the same directory, then renamed over
//!   the target: an existing file's owner and mode are never reused; a target that is a
//!   symbolic link, a device or a pipe is refused, never written through.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Why a file that should be private is refused.
#[derive(Debug, thiserror::Error)]
pub enum UnsafeFile {
    #[error("is a symbolic link; give the file itself, not a link to it")]
    Symlink,
    #[error("is not a regular file")]
    NotRegular,
    #[error(
        "belongs to another user (uid {owner}, not {me}); anyone who owns it can read or change it: move it aside and start a new one, or run as its owner"
    )]
    OtherOwner { owner: u32, me: u32 },
    /// SQLite names its `-wal` after the path: two names mean two journals and two locks.
    #[error(
        "has {0} names (hard links); a second name would let a second worker or a second journal at it: remove the other links"
    )]
    Linked(u64),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The invoking user, as the kernel checks file access (the effective uid).
#[cfg(unix)]
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Opens (creating if needed, 0600) a file that lives on and that only this tool opens (a
/// lock), never through a symbolic link, and refuses it unless it is a regular file of the
/// invoking user with a single name. An existing file is set to 0600.
pub fn open_private(path: &Path) -> Result<File, UnsafeFile> {
    let file = no_follow(OpenOptions::new().read(true).write(true).create(true))
        .open(path)
        .map_err(link_refused)?;
    let meta = file.metadata()?;
    check(&meta)?;
    set_private(&meta, |p| file.set_permissions(p))?;
    Ok(file)
}

/// Creates a new, empty 0600 file (refusing a link or a file already there) and closes it.
pub fn create_new_private(path: &Path) -> Result<(), UnsafeFile> {
    no_follow(OpenOptions::new().write(true).create_new(true))
        .open(path)
        .map_err(link_refused)?;
    Ok(())
}

/// Checks a file that another library opens by its path (the SQLite ledger, its `-wal` and
/// `-shm`) without opening it: a file descriptor of our own on a SQLite database would, once
/// closed, drop every POSIX lock SQLite holds on it in this process. A missing file passes
/// (`None`: SQLite creates side files with the main file's mode); an existing one must be a
/// regular file of the invoking user with a single name, and is set to 0600. Returns the file's
/// identity (device, inode), to check after the library opened it that it opened this file.
pub fn check_private(path: &Path) -> Result<Option<(u64, u64)>, UnsafeFile> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
        Ok(meta) => meta,
    };
    check(&meta)?;
    set_private(&meta, |p| std::fs::set_permissions(path, p))?;
    Ok(Some(identity(&meta)))
}

/// The identity of the file at `path` itself (a link is not followed).
pub fn identity_of(path: &Path) -> io::Result<(u64, u64)> {
    std::fs::symlink_metadata(path).map(|m| identity(&m))
}

#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

fn no_follow(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    options
}

fn link_refused(e: io::Error) -> UnsafeFile {
    match e.raw_os_error() {
        #[cfg(unix)]
        Some(libc::ELOOP) => UnsafeFile::Symlink,
        _ => UnsafeFile::Io(e),
    }
}

/// Refuses a link, anything but a regular file, another user's file, a file with two names.
fn check(meta: &std::fs::Metadata) -> Result<(), UnsafeFile> {
    if meta.file_type().is_symlink() {
        return Err(UnsafeFile::Symlink);
    }
    if !meta.file_type().is_file() {
        return Err(UnsafeFile::NotRegular);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let me = effective_uid();
        if meta.uid() != me {
            return Err(UnsafeFile::OtherOwner {
                owner: meta.uid(),
                me,
            });
        }
        if meta.nlink() > 1 {
            return Err(UnsafeFile::Linked(meta.nlink()));
        }
    }
    Ok(())
}

fn set_private(
    meta: &std::fs::Metadata,
    set: impl FnOnce(std::fs::Permissions) -> io::Result<()>,
) -> Result<(), UnsafeFile> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o7777 != 0o600 {
            set(std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// A file being written whole: a fresh 0600 file beside the target, renamed over it by
/// [`Replacement::commit`]. Dropped without a commit, it is removed and the target is untouched.
pub struct Replacement {
    temp: tempfile::NamedTempFile,
    target: PathBuf,
}

impl Replacement {
    /// Why `target` cannot be replaced: it is a symbolic link (a rename would replace the link,
    /// and as root `/dev/stdout` is one), or a device, pipe or directory (`/dev/null` renamed
    /// over would become a file of secrets). `None`: missing, or a regular file.
    pub fn refusal(target: &Path) -> Option<&'static str> {
        let meta = std::fs::symlink_metadata(target).ok()?;
        if meta.file_type().is_symlink() {
            Some(
                "is a symbolic link; give the file itself (or leave --out out for standard output)",
            )
        } else if !meta.file_type().is_file() {
            Some("is not a regular file; give a file (or leave --out out for standard output)")
        } else {
            None
        }
    }

    /// Creates the temporary file in the target's directory (exclusively, so never through a
    /// link planted there; 0600 whatever the umask). A target that is a link or not a regular
    /// file is refused ([`Replacement::refusal`]).
    pub fn create(target: &Path) -> io::Result<Replacement> {
        if let Some(reason) = Self::refusal(target) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} {reason}", target.display()),
            ));
        }
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .tempfile_in(dir)?;
        Ok(Replacement {
            temp,
            target: target.to_owned(),
        })
    }

    pub fn file(&self) -> &File {
        self.temp.as_file()
    }

    /// Writes `bytes` as the whole new content of `target`, in one rename.
    pub fn write_whole(target: &Path, bytes: &[u8]) -> io::Result<()> {
        let replacement = Replacement::create(target)?;
        io::Write::write_all(&mut replacement.file(), bytes)?;
        replacement.commit()
    }

    /// Makes the content durable, then puts it at the target in one rename.
    pub fn commit(self) -> io::Result<()> {
        self.temp.as_file().sync_all()?;
        self.temp.persist(&self.target).map_err(|e| e.error)?;
        Ok(())
    }
}

//! Postern's key and token files (the admin token, the vault's master key, the audit log's
//! signing and HMAC keys, the interception CA's key): created whole, readable by their owner
//! only, and read only when no other user could have written or read them. A key file another
//! user planted, one every user can read, or a link to a file whose contents are known (a
//! `/proc/self` file is one of postern's user with mode 0400) is refused, not trusted. Also
//! [`replace_file`], for files that are not secret but must be replaced whole, and
//! [`create_private_db`] and [`create_private_dir`] for the private SQLite stores and data_dir.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// A name beside `path` for writing it before it is moved into place:
/// `<path>.<pid>-<random>.tmp`, unique to this process and attempt.
pub fn temporary_sibling(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".{}-{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    PathBuf::from(tmp)
}

/// Replaces `path` whole, or leaves it as it was: `contents` written and synced under a
/// temporary name of this write's own ([`temporary_sibling`]), renamed over `path`, and the
/// directory synced, so a crash leaves the old file or the new one, never an empty or partial
/// one. For files that are not secret (a checkpoint, a snapshot, a state file).
pub fn replace_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = temporary_sibling(path);
    let written = File::create(&tmp)
        .and_then(|mut file| file.write_all(contents).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty());
    File::open(dir.unwrap_or(Path::new("."))).and_then(|dir| dir.sync_all())
}

/// Creates `path` readable by its owner only (0600), whole or not at all: written and synced
/// under a temporary name of this write's own, then linked to `path` (which fails if `path`
/// exists, as creating it would) and the directory synced. A crash part-way leaves at most a
/// stray temporary file, never an empty or partial key at `path`. Where the filesystem has no
/// hard links (SMB, some FUSE mounts) the file is created in place instead. For key files (the
/// gateway's too).
pub fn create_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    let tmp = temporary_sibling(path);
    let mut file = options.open(&tmp)?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::Unsupported | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            let mut file = options.open(path)?;
            file.write_all(contents).and_then(|()| file.sync_all())?;
        }
        linked => linked?,
    }
    match path.parent() {
        Some(dir) => File::open(dir).and_then(|dir| dir.sync_all()),
        None => Ok(()),
    }
}

/// What stands at a path where Postern keeps a file of its own but is no regular file (a
/// symbolic link, whatever it points to; a directory; a special file). Carried inside the
/// `std::io::Error` [`regular_file`] returns; [`not_regular`] reads it back.
#[derive(Debug)]
struct NotRegular(PathBuf, &'static str);

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is {}, not a regular file", self.0.display(), self.1)
    }
}

impl std::error::Error for NotRegular {}

/// The path and what stood there when `error` came from [`regular_file`] (or
/// [`create_private_db`]) refusing it: "a symbolic link", "a directory", "a special file".
pub fn not_regular(error: &std::io::Error) -> Option<(&Path, &'static str)> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<NotRegular>())
        .map(|NotRegular(path, found)| (path.as_path(), *found))
}

/// The metadata of the regular file at `path` (never of where a link there leads); `None` when
/// nothing is there; an error [`not_regular`] names when something else is.
pub fn regular_file(path: &Path) -> std::io::Result<Option<std::fs::Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_file() => Ok(Some(metadata)),
        Ok(metadata) => {
            let kind = metadata.file_type();
            let found = if kind.is_symlink() {
                "a symbolic link"
            } else if kind.is_dir() {
                "a directory"
            } else {
                "a special file"
            };
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                NotRegular(path.to_path_buf(), found),
            ))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Makes `path` ready for an SQLite database of private data (the vault, the discovery
/// store): created empty with mode 0600 when absent (an empty file is a database), so it is
/// never readable by others for a moment; it and the side files SQLite keeps beside it
/// (`-wal`, `-shm`, `-journal`) must be regular files, not links ([`regular_file`]), and are
/// narrowed to 0600. A file that cannot be narrowed is an error naming it and the fix.
pub fn create_private_db(path: &Path) -> std::io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        // Or created meanwhile by another process, or there already: narrowed below.
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error),
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.as_os_str().to_os_string();
        file.push(suffix);
        let file = Path::new(&file);
        // A side file absent, or removed meanwhile by another process's last connection.
        if let Some(metadata) = regular_file(file)? {
            narrow_to_owner(file, &metadata)?;
        }
    }
    Ok(())
}

/// Narrows `path` (a regular file, `metadata` its own) to mode 0600 unless it is already.
fn narrow_to_owner(path: &Path, metadata: &std::fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = metadata.mode() & 0o777;
    if mode == 0o600 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|error| {
        std::io::Error::new(
            error.kind(),
            format!(
                "{} has mode {mode:04o} and could not be made private (0600): run `chmod 600 {}` as its owner, or move the data_dir to a file system that keeps modes ({error})",
                path.display(),
                path.display()
            ),
        )
    })
}

/// Why a key file was refused: its problem and the path, without its contents. Carried inside
/// the `std::io::Error` [`read_private_file`] returns; [`is_not_private`] tells it apart.
#[derive(Debug)]
struct NotPrivate(String);

impl std::fmt::Display for NotPrivate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotPrivate {}

/// Whether `error` (from [`read_private_file`]) is a refusal of the file — its owner, its mode,
/// a link, not a regular file — rather than a failure to read it.
pub fn is_not_private(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<NotPrivate>())
}

/// The effective user this process runs as.
fn effective_user() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Why a directory holding key files could be written by another user, if it could: owned by
/// another user, or writable by group or others. (Key files planted in it are refused by
/// [`read_private_file`]; other files in it are not.)
pub fn writable_by_others(dir: &Path) -> Option<String> {
    let metadata = std::fs::metadata(dir).ok()?;
    let user = effective_user();
    let mode = metadata.mode() & 0o777;
    if metadata.uid() != user {
        Some(format!(
            "is owned by user id {}, not by the user postern runs as ({user})",
            metadata.uid()
        ))
    } else if mode & 0o022 != 0 {
        Some(format!(
            "has mode {mode:03o}: group or other users may write it"
        ))
    } else {
        None
    }
}

/// Creates `dir` and any missing parents with mode 0700 from the start (no moment in which
/// another user could enter it or, under a loose umask, plant files in it). An existing
/// directory is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Why another user could read the secret file `path` (its target, when a link), if one could:
/// group or others may read it. (The files an operator provides, such as a `from_file`
/// credential or the listener's key, are read whatever their mode; this is the warning.)
pub fn readable_by_others(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.mode() & 0o777;
    (mode & 0o044 != 0).then(|| {
        format!(
            "{} has mode {mode:03o}: group or other users may read it (fix: chmod 600 {})",
            path.display(),
            path.display()
        )
    })
}

/// Why another user could replace `dir` whole, if one could: a directory above it (up to `/`)
/// that another user than this process's or root owns, or that group or others may write
/// without the sticky bit (`/tmp`'s `1777` keeps others from renaming what is not theirs). Such
/// a user could move `dir` aside and put one of their own in its place.
pub fn replaceable_by_others(dir: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let user = effective_user();
    dir.ancestors().skip(1).find_map(|ancestor| {
        let metadata = std::fs::metadata(ancestor).ok()?;
        let mode = metadata.mode() & 0o7777;
        if metadata.uid() != user && metadata.uid() != 0 {
            Some(format!(
                "is inside {}, owned by user id {}, who can replace it",
                ancestor.display(),
                metadata.uid()
            ))
        } else if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            Some(format!(
                "is inside {}, of mode {:03o}: group or other users may replace what it holds",
                ancestor.display(),
                mode & 0o777
            ))
        } else {
            None
        }
    })
}

/// Reads `path`, a file holding a secret, refusing it (an error [`is_not_private`] tells, of
/// kind `PermissionDenied`, whose message names the path and the problem, never the contents)
/// unless it is a regular file — not a symbolic link — owned by this process's effective user,
/// with no permission for group or others (mode 0600 or 0400). `NotFound` is passed on as it
/// is, for callers that create the file on first use. The checks are made on the opened file,
/// so it cannot be swapped between check and read.
pub fn read_private_file(path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let refuse = |problem: String| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            NotPrivate(format!("{} {problem}", path.display())),
        )
    };
    // Not through a link (one to `/proc/self/personality` passes every other check and holds a
    // known value), nor waiting on a FIFO planted in its place.
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Err(error) if error.raw_os_error() == Some(libc::ELOOP) => {
            return Err(refuse(
                "is a symbolic link: put the file itself there".into(),
            ))
        }
        opened => opened?,
    };
    let metadata = file.metadata()?;
    if !metadata.file_type().is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    let user = effective_user();
    if metadata.uid() != user {
        return Err(refuse(format!(
            "is owned by user id {}, not by the user postern runs as ({user}): another user may \
             have written it",
            metadata.uid()
        )));
    }
    let mode = metadata.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "has mode {mode:03o}: group or other users may read or change it (it must be 0600)"
        )));
    }
    let mut contents = Zeroizing::new(Vec::with_capacity(metadata.len() as usize));
    file.read_to_end(&mut contents)?;
    Ok(contents)
}

#[cfg(test)]
mod tests {
    /// A database file that cannot be narrowed to 0600 is an error naming the file and the
    /// fix, never ignored. (procfs refuses every chmod of a process's files, even root's.)
    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_that_cannot_be_made_private_is_an_error_naming_it_and_the_fix() {
        let path = std::path::Path::new("/proc/self/status");
        let metadata = std::fs::metadata(path).unwrap();
        let error = super::narrow_to_owner(path, &metadata)
            .unwrap_err()
            .to_string();
        assert!(error.contains("/proc/self/status has mode 0444"), "{error}");
        assert!(error.contains("chmod 600 /proc/self/status"), "{error}");
    }

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn private(path: &Path, contents: &[u8], mode: u32) {
        std::fs::write(path, contents).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A directory above data_dir that others may write lets them replace data_dir whole; the
    /// sticky bit (as `/tmp` has) keeps them from it.
    #[test]
    fn a_directory_others_may_replace_is_named() {
        let outer = tempfile::tempdir().unwrap();
        let parent = outer.path().join("parent");
        let dir = parent.join("data");
        std::fs::create_dir_all(&dir).unwrap();
        // What lies above the temporary directory is this machine's: only the directories the
        // test made are judged.
        let names_ours = |problem: Option<String>| {
            problem.is_some_and(|p| p.contains(&*outer.path().to_string_lossy()))
        };
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!names_ours(replaceable_by_others(&dir)));
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777)).unwrap();
        let problem = replaceable_by_others(&dir).unwrap();
        assert!(
            problem.contains(&*parent.to_string_lossy()) && problem.contains("mode 777"),
            "{problem}"
        );
        // The sticky bit (as `/tmp` has) keeps others from replacing what is not theirs.
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(!names_ours(replaceable_by_others(&dir)));
    }

    /// A file replaced whole holds the new contents, and no temporary file is left beside it;
    /// one that cannot be written leaves the old one as it was.
    #[test]
    fn a_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        replace_file(&path, b"old\n").unwrap();
        replace_file(&path, b"new\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state"]);
        assert!(replace_file(&dir.path().join("absent/state"), b"x").is_err());
    }

    #[test]
    fn a_private_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        private(&path, b"secret\n", 0o600);
        assert_eq!(read_private_file(&path).unwrap().as_slice(), b"secret\n");
        private(&path, b"secret\n", 0o400);
        assert_eq!(read_private_file(&path).unwrap().as_slice(), b"secret\n");
    }

    #[test]
    fn a_file_others_may_read_or_change_is_refused_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o666] {
            private(&path, b"secret\n", mode);
            let error = read_private_file(&path).unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied);
            assert!(is_not_private(&error));
            assert!(
                error.to_string().contains(&format!("mode {mode:03o}")),
                "{error}"
            );
            assert!(!error.to_string().contains("secret"), "{error}");
        }
    }

    #[test]
    fn a_link_and_a_fifo_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        let link = dir.path().join("key");
        private(&target, b"secret\n", 0o600);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = read_private_file(&link).unwrap_err();
        assert!(is_not_private(&error));
        assert!(error.to_string().contains("is a symbolic link"), "{error}");
        // A link to a /proc/self file, which is postern's user's with mode 0400 and holds a
        // known value, the same.
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("/proc/self/personality", &link).unwrap();
        assert!(is_not_private(&read_private_file(&link).unwrap_err()));

        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let error = read_private_file(&fifo).unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
        let absent = read_private_file(&dir.path().join("absent")).unwrap_err();
        assert_eq!(absent.kind(), std::io::ErrorKind::NotFound);
        assert!(!is_not_private(&absent));
    }

    /// Run as root (as CI here is), a file given to another user is refused: root reading a
    /// token another user wrote would let that user in.
    #[test]
    fn a_file_of_another_user_is_refused() {
        if effective_user() != 0 {
            eprintln!("skipped: only root can give a file to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        private(&path, b"secret\n", 0o600);
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let error = read_private_file(&path).unwrap_err();
        assert!(
            error.to_string().contains("owned by user id 65534"),
            "{error}"
        );
    }
}

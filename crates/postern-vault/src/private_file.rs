//! Reading a file that holds a secret (a key or a token) only when no other user could have
//! written or read it: a token file another user planted, or one every user can read, is
//! refused, not trusted.

use std::io::Read as _;
use std::path::Path;

use zeroize::Zeroizing;

/// Reads `path`, a file holding a secret, refusing it (an error of kind `PermissionDenied`
/// whose message names the problem) unless it is a regular file owned by this process's
/// effective user with no permission for group or others (mode 0600 or 0400). A symbolic link
/// is followed, and the file it leads to must pass the same checks. `NotFound` is passed on
/// as it is, for callers that create the file on first use.
pub fn read_private_file(path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A FIFO planted in its place must not hang the start: opened without waiting for a
        // writer, then refused as not a regular file.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let mut file = options.open(path)?;
    let metadata = file.metadata()?;
    let refuse = |problem: String| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} {problem}", path.display()),
        )
    };
    if !metadata.file_type().is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let user = unsafe { libc::geteuid() };
        if metadata.uid() != user {
            return Err(refuse(format!(
                "is owned by user id {}, not by the user postern runs as ({user}): another user \
                 may have written it",
                metadata.uid()
            )));
        }
        let mode = metadata.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(refuse(format!(
                "has mode {mode:03o}: group or other users may read or change it (it must be \
                 0600)"
            )));
        }
    }
    let mut contents = Zeroizing::new(Vec::with_capacity(metadata.len() as usize));
    file.read_to_end(&mut contents)?;
    Ok(contents)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn private(path: &Path, contents: &[u8], mode: u32) {
        std::fs::write(path, contents).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
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
            assert!(
                error.to_string().contains(&format!("mode {mode:03o}")),
                "{error}"
            );
            assert!(!error.to_string().contains("secret"), "{error}");
        }
    }

    #[test]
    fn a_link_is_judged_by_the_file_it_leads_to_and_a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        let link = dir.path().join("key");
        private(&target, b"secret\n", 0o644);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = read_private_file(&link).unwrap_err();
        assert!(error.to_string().contains("mode 644"), "{error}");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_private_file(&link).unwrap().as_slice(), b"secret\n");

        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let error = read_private_file(&fifo).unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
        assert_eq!(
            read_private_file(&dir.path().join("absent"))
                .unwrap_err()
                .kind(),
            std::io::ErrorKind::NotFound
        );
    }

    /// Run as root (as CI here is), a file given to another user is refused: root reading a
    /// token another user wrote would let that user in.
    #[test]
    fn a_file_of_another_user_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
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

//! Checks of the socket directory and of socket path lengths.

use burro_protocol::UNIX_SOCKET_PATH_MAX;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Maximum length of a job id the server generates (a hyphenated UUID).
pub const MAX_JOB_ID_LEN: usize = 36;

/// Creates the socket directory with mode 0700 if absent, or checks that
/// the existing one is a real directory owned by this user with mode 0700.
///
/// # Errors
///
/// Returns a message naming the directory and the check that failed.
pub fn prepare_socket_dir(dir: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("creating the socket directory {} failed: {e}", dir.display()))?;
            // DirBuilder applies the umask; set the mode exactly.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("setting mode 0700 on the socket directory {} failed: {e}", dir.display()))?;
            Ok(())
        }
        Err(err) => Err(format!("checking the socket directory {} failed: {err}", dir.display())),
        Ok(meta) => {
            if meta.file_type().is_symlink() {
                return Err(format!(
                    "the socket directory {} is a symbolic link; use a real directory (set [external] socket_dir)",
                    dir.display()
                ));
            }
            if !meta.is_dir() {
                return Err(format!("the socket directory {} is not a directory", dir.display()));
            }
            let uid = nix::unistd::geteuid().as_raw();
            if meta.uid() != uid {
                return Err(format!(
                    "the socket directory {} is owned by uid {}, not by this server's uid {uid}; remove it or set [external] socket_dir",
                    dir.display(),
                    meta.uid()
                ));
            }
            let mode = meta.mode() & 0o777;
            if mode != 0o700 {
                return Err(format!(
                    "the socket directory {} has mode {mode:o}, expected 700; run chmod 700 {}",
                    dir.display(),
                    dir.display()
                ));
            }
            Ok(())
        }
    }
}

/// Returns the path of a job's socket.
pub fn job_socket_path(dir: &Path, job_id: &str) -> std::path::PathBuf {
    dir.join(format!("job_{job_id}.sock"))
}

/// Returns the directory that contains the per-job directories of jobs that
/// run as another user: `<socket_dir>-users`, mode 0711, so those users can
/// pass through it to their own directory without listing it.
pub fn users_dir(dir: &Path) -> std::path::PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push("-users");
    std::path::PathBuf::from(name)
}

/// Returns the socket path of a job that runs as another user.
pub fn user_job_socket_path(dir: &Path, job_id: &str) -> std::path::PathBuf {
    users_dir(dir).join(format!("job_{job_id}")).join("job.sock")
}

/// Creates the users directory with mode 0711, or checks that the existing
/// one is a real directory owned by this user with that mode.
///
/// # Errors
///
/// Returns a message naming the directory and the check that failed.
pub fn prepare_users_dir(dir: &Path) -> Result<(), String> {
    let users = users_dir(dir);
    match std::fs::symlink_metadata(&users) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o711)
                .create(&users)
                .map_err(|e| format!("creating the directory {} failed: {e}", users.display()))?;
        }
        Err(err) => return Err(format!("checking the directory {} failed: {err}", users.display())),
        Ok(meta) if meta.file_type().is_symlink() || !meta.is_dir() => {
            return Err(format!("{} must be a directory, not a link or a file", users.display()));
        }
        Ok(meta) if meta.uid() != nix::unistd::geteuid().as_raw() => {
            return Err(format!("{} is owned by uid {}, not by this server", users.display(), meta.uid()));
        }
        Ok(_) => {}
    }
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("setting mode 0711 on {} failed: {e}", users.display()))
}

/// Checks that the longest socket path fits the Unix limit.
///
/// # Errors
///
/// Returns a message with the directory, the length and the limit.
pub fn check_socket_path_length(dir: &Path) -> Result<(), String> {
    let id = "x".repeat(MAX_JOB_ID_LEN);
    // Jobs that run as another user have the longer path.
    let length = job_socket_path(dir, &id)
        .as_os_str()
        .len()
        .max(user_job_socket_path(dir, &id).as_os_str().len());
    if length > UNIX_SOCKET_PATH_MAX {
        return Err(format!(
            "socket paths under {} would be {length} bytes long, over the Unix limit of {UNIX_SOCKET_PATH_MAX}; \
             choose a shorter [external] socket_dir",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_dir_checks() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("sockets");
        prepare_socket_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        prepare_socket_dir(&dir).unwrap();

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(prepare_socket_dir(&dir).unwrap_err().contains("mode 755"));

        let link = root.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(prepare_socket_dir(&link).unwrap_err().contains("symbolic link"));

        let file = root.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(prepare_socket_dir(&file).unwrap_err().contains("not a directory"));
    }

    #[test]
    fn long_socket_dir_is_rejected() {
        assert!(check_socket_path_length(Path::new("/tmp/burro-0")).is_ok());
        let long = format!("/tmp/{}", "d".repeat(80));
        let err = check_socket_path_length(Path::new(&long)).unwrap_err();
        assert!(err.contains("over the Unix limit of 107"), "{err}");
    }
}

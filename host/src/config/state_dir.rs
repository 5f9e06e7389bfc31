//! The state folder (`state_dir`) holds what the host must trust later: the
//! run ledger, compiled plugins (native code) and their key, promoted
//! plugin copies. It is made readable by its owner only, its files too.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and missing parents) for the owner only: 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `bytes` to `path`, readable by the owner only, whole or not at
/// all: into a new temporary file beside it, then renamed over it, so a
/// reader (another process, a restart after a crash) never sees half.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| {
            // `mode` applies only when the file is created.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            file.write_all(bytes)
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Creates an empty owner-only file at `path` if there is none (SQLite
/// then gives its journal files the same permissions).
pub fn create_private_file(path: &Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens `path` for appending only (created owner-only): writes land at
/// the end whatever other handles do, and nothing before them changes.
pub fn open_private_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// A random secret of `len` bytes kept in `path` (owner-only), made on
/// first use. A file of the wrong length is replaced.
pub fn private_key_file(path: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() == len => return Ok(bytes),
        Ok(_) => {
            tracing::warn!(file = %path.display(), "malformed key file; making a new one")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let key: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
    write_private(path, &key)?;
    Ok(key)
}

/// Whether group or others may write `dir` (then nothing in it can be
/// trusted to be the host's own).
pub fn writable_by_others(dir: &Path) -> bool {
    std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o022 != 0)
}

/// What is wrong with the state folder's permissions, if anything: group
/// or others may read or write it.
pub fn exposed(dir: &Path) -> Option<String> {
    let mode = std::fs::metadata(dir).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "state_dir {} is mode {mode:o}: others can read the run ledger or write compiled plugins; `chmod 700 {}`",
            dir.display(),
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_folder_and_its_files_are_the_owners_only() {
        let root = std::env::temp_dir().join(format!("sluice-state-{}", std::process::id()));
        let dir = root.join("state/compiled");
        create_private_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root.join("state")), 0o700);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(exposed(&dir), None);
        let file = dir.join("x");
        std::fs::write(&file, b"old").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&file, b"new").unwrap();
        assert_eq!(
            (mode(&file), std::fs::read(&file).unwrap()),
            (0o600, b"new".to_vec())
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(exposed(&dir).unwrap().contains("is mode 755"));
        assert!(!writable_by_others(&dir));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(writable_by_others(&dir));
        std::fs::remove_dir_all(&root).unwrap();
    }
}

//! Writing output files without following planted links: `collect -o`, `cluster -o`,
//! `collect --kube` and `bundle add` often run as root in shared directories. Every file netray
//! writes is first created under a fresh name next to its target with
//! `O_CREAT | O_EXCL | O_NOFOLLOW` (never an existing file or a symbolic link someone planted),
//! then renamed over the target (which replaces a link at the target instead of writing
//! through it).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A new, empty file next to a target, created `O_CREAT | O_EXCL | O_NOFOLLOW` with mode 0644
/// (less the umask) under a fresh name `.NAME.PID.RANDOM.partial`. It is removed when dropped
/// unless [`TempFile::persist`] renamed it over its target, so an error or a cancelled task
/// leaves nothing behind.
#[derive(Debug)]
pub struct TempFile {
    file: File,
    path: PathBuf,
    kept: bool,
}

impl TempFile {
    /// A temporary file in the directory of `target` (the current directory when `target`
    /// has no parent).
    pub fn beside(target: &Path) -> io::Result<TempFile> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = target.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "the output path names no file")
        })?;
        // Short enough for NAME_MAX whatever the target's name.
        let stem: String = name.to_string_lossy().chars().take(100).collect();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        for attempt in 0u32..64 {
            let path = dir.join(format!(
                ".{stem}.{}.{:08x}.partial",
                std::process::id(),
                seed.wrapping_add(attempt.wrapping_mul(0x9e37_79b9))
            ));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        file,
                        path,
                        kept: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "could not create a temporary file next to the output",
        ))
    }

    /// Where the file is (to read it back before it is persisted).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sync the data to disk.
    pub fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// Sync, then rename over `target` (a link at `target` is replaced, not followed). On
    /// error the temporary file is removed.
    pub fn persist(mut self, target: &Path) -> io::Result<()> {
        self.file.sync_all()?;
        std::fs::rename(&self.path, target)?;
        self.kept = true;
        Ok(())
    }
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Write `data` to `path` atomically and safely through a [`TempFile`]: written, synced,
/// then renamed over `path`. A reader never sees half a file.
pub fn write_file_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = TempFile::beside(path)?;
    tmp.write_all(data)?;
    tmp.persist(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_links_are_not_written_through() {
        let tmp = std::env::temp_dir().join(format!("netray-out-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let victim = tmp.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let out = tmp.join("node.json");
        // The old fixed temporary name, and the output itself, as links to the victim.
        std::os::unix::fs::symlink(&victim, tmp.join("node.json.partial")).unwrap();
        std::os::unix::fs::symlink(&victim, &out).unwrap();
        write_file_atomic(&out, b"{}").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{}");
        assert!(!std::fs::symlink_metadata(&out).unwrap().is_symlink());
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn a_dropped_temp_file_is_removed() {
        let dir = std::env::temp_dir().join(format!("netray-tmpdrop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut t = TempFile::beside(&dir.join("x.json")).unwrap();
        t.write_all(b"half").unwrap();
        let p = t.path().to_path_buf();
        assert!(p.exists());
        drop(t);
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

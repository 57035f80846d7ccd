//! Writing output files without following planted links: `collect -o` and `cluster -o` run as
//! root, often in shared directories.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Write `data` to `path` atomically and safely: a new temporary file is created next to it
/// with `O_CREAT | O_EXCL | O_NOFOLLOW` (never an existing file or a symbolic link someone
/// planted), written, synced, then renamed over `path` (which replaces a link at `path`
/// instead of writing through it). A reader never sees half a file. The file gets mode 0644
/// (less the umask).
pub fn write_file_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "the output path names no file")
    })?;
    // Short enough for NAME_MAX whatever the target's name.
    let stem: String = name.to_string_lossy().chars().take(100).collect();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for attempt in 0u32..64 {
        let tmp = dir.join(format!(
            ".{stem}.{}.{:08x}.partial",
            std::process::id(),
            seed.wrapping_add(attempt.wrapping_mul(0x9e37_79b9))
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp);
        let mut file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let done = file
            .write_all(data)
            .and_then(|_| file.sync_all())
            .and_then(|_| std::fs::rename(&tmp, path));
        if done.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        return done;
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "could not create a temporary file next to the output",
    ))
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
}

//! Files under the data directory: written to a temporary name, synced and renamed, so a crash
//! never leaves half a file; secrets (the token, job specs, handlers) readable by the owner only.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;

/// Creates a directory (and its parents); a new directory is private to the owner.
pub(crate) fn create_private_dir(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, then renamed over it.
/// `private`: readable and writable by the owner only.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp =
        path.with_file_name(format!(".{name}.tmp-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced (best effort).
        if let Some(dir) = path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes a value as pretty JSON, atomically.
pub(crate) fn write_json(path: &Path, value: &impl serde::Serialize, private: bool) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes, private)
}

/// The bearer token in `path`, or a new one (32 random bytes, hex) written there with mode 0600.
/// Returns the token and whether it was generated.
pub(crate) fn read_or_create_token(path: &Path) -> anyhow::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.is_empty() {
                anyhow::bail!("the token file {} is empty", path.display());
            }
            Ok((token, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            rand::fill(&mut bytes);
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                create_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            write_atomic(path, format!("{token}\n").as_bytes(), true)
                .with_context(|| format!("cannot write the token file {}", path.display()))?;
            Ok((token, true))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the token file {}", path.display())),
    }
}

/// Now, RFC 3339 in UTC.
pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Nanoseconds since the epoch as RFC 3339 in UTC.
pub(crate) use operators::alarm::eval::format_time as ns_rfc3339;

/// Locks a mutex; a panic elsewhere while it was held does not make the state unusable.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

//! Content-addressed artifacts: files a step leaves in `$PLEXUS_ARTIFACTS/` are stored once
//! under `artifacts/<first two hex>/<sha256>` in the data directory.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Collected {
    /// Path relative to the artifacts directory, with `/` separators.
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

pub fn artifact_path(store_root: &Path, sha256: &str) -> PathBuf {
    store_root.join(&sha256[..2]).join(sha256)
}

/// Hashes and moves every regular file under `dir` into `store_root`.
pub fn collect(dir: &Path, store_root: &Path) -> std::io::Result<Vec<Collected>> {
    // Never follow a step's symlink out of its scratch space (entries below are checked
    // by their own type, which does not follow links).
    if std::fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir()) {
        return Err(std::io::Error::other(
            "$PLEXUS_ARTIFACTS was replaced by something that is not a directory",
        ));
    }
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    let mut out = Vec::with_capacity(found.len());
    for path in found {
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        let sha256 = hex::encode(hasher.finalize());
        let dest = artifact_path(store_root, &sha256);
        if dest.exists() {
            std::fs::remove_file(&path)?;
        } else {
            std::fs::create_dir_all(dest.parent().expect("has parent"))?;
            if std::fs::rename(&path, &dest).is_err() {
                // Different filesystem: copy, then remove.
                std::fs::copy(&path, &dest)?;
                std::fs::remove_file(&path)?;
            }
        }
        let name = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        out.push(Collected { name, sha256, size });
    }
    Ok(out)
}

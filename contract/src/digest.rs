//! What a model's sha256 covers (`spec.model.sha256`, `fetch --sha256`, the `sha256:` termination
//! message, `status.model.digest`): defined once here, computed by [`path_sha256`] on both sides.
//!
//! - A model that is **one file** (an ONNX or GGUF file, whatever its name) is pinned by the plain
//!   sha256 of that file: what `sha256sum FILE` prints.
//! - A model that is **a directory** (a safetensors encoder with its config and tokenizer, an S3
//!   prefix, a Hub repository) is pinned by the sha256 of its manifest: the listing `sha256sum`
//!   prints for every regular file under it (symlinks followed), one line per file, sorted by
//!   relative path in byte order, paths relative to the directory with `/` separators:
//!
//!   ```text
//!   <sha256 of file>  <relative/path>\n
//!   ```
//!
//!   so it can be reproduced with coreutils alone:
//!   `cd DIR && find -L . -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum | sha256sum`.
//!
//! `fetch` and `serve` digest the same object because `fetch` makes the object the pod serves at
//! [`crate::names::path::fetched_model`]: the file itself for a file, the directory for a directory
//! (see `lexserve-sidecar fetch`). `serve` is pointed at that path and digests whatever it finds
//! there with the same function, so a pin that passed `fetch` passes `serve`.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DigestError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: file names must be UTF-8 without newlines or backslashes to be digested")]
    UnsupportedName { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DigestError + '_ {
    move |source| DigestError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of one file, streamed.
pub fn file_sha256(path: &Path) -> Result<String, DigestError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(to_hex(&hasher.finalize()))
}

/// Every regular file under `root`, as sorted relative paths.
pub fn list_files(root: &Path) -> Result<Vec<String>, DigestError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let dir = root.join(&relative);
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            // metadata() follows symlinks, as the documented `find -L` does.
            let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
            let name = relative.join(entry.file_name());
            if meta.is_dir() {
                stack.push(name);
            } else if meta.is_file() {
                let text = name
                    .to_str()
                    .filter(|s| !s.contains(['\n', '\\']))
                    .ok_or_else(|| DigestError::UnsupportedName { path: path.clone() })?;
                out.push(text.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The digest of a file or a directory, as documented at the top of this module.
pub fn path_sha256(path: &Path) -> Result<String, DigestError> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_dir() {
        return file_sha256(path);
    }
    let mut listing = Sha256::new();
    for relative in list_files(path)? {
        let digest = file_sha256(&path.join(&relative))?;
        listing.update(format!("{digest}  {relative}\n").as_bytes());
    }
    Ok(to_hex(&listing.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_digest_matches_the_documented_listing() {
        let dir = std::env::temp_dir().join(format!("lexserve-digest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("b.txt"), b"bee").unwrap();
        std::fs::write(dir.join("sub/a.txt"), b"ay").unwrap();
        std::fs::write(dir.join("a.txt"), b"").unwrap();
        let expected_listing = format!(
            "{}  a.txt\n{}  b.txt\n{}  sub/a.txt\n",
            to_hex(&Sha256::digest(b"")),
            to_hex(&Sha256::digest(b"bee")),
            to_hex(&Sha256::digest(b"ay")),
        );
        assert_eq!(
            path_sha256(&dir).unwrap(),
            to_hex(&Sha256::digest(expected_listing.as_bytes()))
        );
        assert_eq!(
            path_sha256(&dir.join("b.txt")).unwrap(),
            to_hex(&Sha256::digest(b"bee"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The reference sample file (`serve --drift-reference`): UTF-8, one input per line, blank lines
//! skipped, bounded by the contract's [`REFERENCE_MAX_INPUTS`] and [`REFERENCE_MAX_BYTES`] (what
//! a ConfigMap key can carry). A file that breaks a bound, cannot be read or holds no input
//! stops `serve` before it starts: a baseline silently cut short would report drift that is not
//! there.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lexserve_contract::drift::{REFERENCE_MAX_BYTES, REFERENCE_MAX_INPUTS};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ReferenceError {
    #[error("cannot read the drift reference sample {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the drift reference sample {path} is {bytes} bytes; at most {REFERENCE_MAX_BYTES} bytes are allowed"
    )]
    TooBig { path: PathBuf, bytes: u64 },
    #[error(
        "the drift reference sample {path} holds more than {REFERENCE_MAX_INPUTS} inputs (one per line); at most {REFERENCE_MAX_INPUTS} are allowed"
    )]
    TooManyInputs { path: PathBuf },
    #[error("the drift reference sample {path} is not UTF-8 text (line {line})")]
    NotUtf8 { path: PathBuf, line: usize },
    #[error(
        "the drift reference sample {path} is empty: it needs at least one input (one per line, blank lines skipped)"
    )]
    Empty { path: PathBuf },
}

/// The inputs of a reference sample, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceSample {
    pub path: PathBuf,
    pub inputs: Arc<[String]>,
}

impl ReferenceSample {
    /// Reads and checks `path`. The size is checked before reading, so a huge file is refused
    /// without being loaded.
    pub fn read(path: &Path) -> Result<Self, ReferenceError> {
        let read_err = |source| ReferenceError::Read {
            path: path.to_path_buf(),
            source,
        };
        let bytes = std::fs::metadata(path).map_err(read_err)?.len();
        if bytes > REFERENCE_MAX_BYTES {
            return Err(ReferenceError::TooBig {
                path: path.to_path_buf(),
                bytes,
            });
        }
        let content = std::fs::read(path).map_err(read_err)?;
        let inputs = parse(path, &content)?;
        Ok(Self {
            path: path.to_path_buf(),
            inputs: inputs.into(),
        })
    }
}

/// The inputs in `content` (the file `path`, named in errors): one per line, `\r\n` accepted,
/// lines of whitespace skipped (the API refuses such texts, so they are no one's traffic).
pub fn parse(path: &Path, content: &[u8]) -> Result<Vec<String>, ReferenceError> {
    if content.len() as u64 > REFERENCE_MAX_BYTES {
        return Err(ReferenceError::TooBig {
            path: path.to_path_buf(),
            bytes: content.len() as u64,
        });
    }
    let mut inputs = Vec::new();
    for (index, line) in content.split(|b| *b == b'\n').enumerate() {
        let line = std::str::from_utf8(line).map_err(|_| ReferenceError::NotUtf8 {
            path: path.to_path_buf(),
            line: index + 1,
        })?;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        if inputs.len() == REFERENCE_MAX_INPUTS {
            return Err(ReferenceError::TooManyInputs {
                path: path.to_path_buf(),
            });
        }
        inputs.push(line.to_string());
    }
    if inputs.is_empty() {
        return Err(ReferenceError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(content: &str) -> Result<Vec<String>, ReferenceError> {
        parse(Path::new("/ref.txt"), content.as_bytes())
    }

    #[test]
    fn one_input_per_line_blank_lines_and_crlf_skipped() {
        assert_eq!(
            parsed("a b\r\n\n  \nc\n").unwrap(),
            vec!["a b".to_string(), "c".to_string()]
        );
    }

    #[test]
    fn the_bounds_are_inclusive_and_errors_name_the_file_and_limit() {
        let at_limit = "x\n".repeat(REFERENCE_MAX_INPUTS);
        assert_eq!(parsed(&at_limit).unwrap().len(), REFERENCE_MAX_INPUTS);
        // Blank lines do not count toward the limit.
        assert!(parsed(&format!("{at_limit}\n\n")).is_ok());
        let err = parsed(&format!("{at_limit}y\n")).unwrap_err().to_string();
        assert!(err.contains("/ref.txt") && err.contains("10000"), "{err}");

        let big = "x".repeat(REFERENCE_MAX_BYTES as usize + 1);
        let err = parsed(&big).unwrap_err().to_string();
        assert!(err.contains("/ref.txt") && err.contains("1048576"), "{err}");
    }

    #[test]
    fn empty_and_non_utf8_are_refused() {
        for content in ["", "\n \n\t\n"] {
            let err = parsed(content).unwrap_err();
            assert!(matches!(err, ReferenceError::Empty { .. }), "{err}");
        }
        let err = parse(Path::new("/ref.txt"), b"ok\n\xff\n").unwrap_err();
        assert!(
            err.to_string().contains("line 2") && err.to_string().contains("/ref.txt"),
            "{err}"
        );
    }
}

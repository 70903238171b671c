//! An answer of an inference route, read for comparison: labels with scores (classifiers),
//! embeddings, or generated texts. Streamed answers (server-sent events) are read whole: the
//! text a client would have assembled from them.

use serde_json::Value;

/// What an answer says, per input (or per choice, for generation).
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Each input's labels with their scores, the highest first (ties in the answer's order).
    Labels(Vec<Vec<(String, f64)>>),
    Embeddings(Vec<Vec<f64>>),
    Texts(Vec<String>),
}

/// Reads `body`, the answer of `route` (a route pattern of `http::routes`); the error says what
/// is missing.
pub fn parse_answer(route: &str, body: &[u8]) -> Result<Answer, String> {
    match route {
        "/predict" => predict(&json(body)?),
        "/embed" => Ok(Answer::Embeddings(vectors(field(
            &json(body)?,
            "embeddings",
        )?)?)),
        "/v1/embeddings" => openai_embeddings(&json(body)?),
        "/v2/models/{name}/infer" | "/v2/models/{name}/versions/{version}/infer" => {
            v2_outputs(&json(body)?)
        }
        "/generate" => Ok(Answer::Texts(vec![string(field(
            &json(body)?,
            "generated_text",
        )?)?])),
        "/generate_stream" => generate_stream(body),
        "/v1/completions" => choices(body, &["text"], &["text"]),
        "/v1/chat/completions" => choices(body, &["message", "content"], &["delta", "content"]),
        other => Err(format!("no answer shape is known for route {other}")),
    }
}

fn json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))
}

fn field<'a>(value: &'a Value, name: &str) -> Result<&'a Value, String> {
    value.get(name).ok_or_else(|| format!("no field {name:?}"))
}

fn string(value: &Value) -> Result<String, String> {
    value
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{value} is not a string"))
}

fn numbers(value: &Value) -> Result<Vec<f64>, String> {
    value
        .as_array()
        .ok_or_else(|| "not an array of numbers".to_string())?
        .iter()
        .map(|v| v.as_f64().ok_or_else(|| format!("{v} is not a number")))
        .collect()
}

fn vectors(value: &Value) -> Result<Vec<Vec<f64>>, String> {
    value
        .as_array()
        .ok_or_else(|| "not an array of vectors".to_string())?
        .iter()
        .map(numbers)
        .collect()
}

/// Labels paired with scores, sorted highest first (stable: ties keep the answer's order).
fn ranked(labels: impl IntoIterator<Item = String>, scores: Vec<f64>) -> Vec<(String, f64)> {
    let mut pairs: Vec<(String, f64)> = labels.into_iter().zip(scores).collect();
    pairs.sort_by(|a, b| b.1.total_cmp(&a.1));
    pairs
}

/// `{"labels": [..], "probabilities": [[..], ..]}`.
fn predict(answer: &Value) -> Result<Answer, String> {
    let labels: Vec<String> = field(answer, "labels")?
        .as_array()
        .ok_or("labels is not an array")?
        .iter()
        .map(string)
        .collect::<Result<_, _>>()?;
    let inputs = vectors(field(answer, "probabilities")?)?;
    inputs
        .into_iter()
        .map(|scores| {
            if scores.len() != labels.len() {
                return Err(format!(
                    "{} probabilities for {} labels",
                    scores.len(),
                    labels.len()
                ));
            }
            Ok(ranked(labels.iter().cloned(), scores))
        })
        .collect::<Result<_, _>>()
        .map(Answer::Labels)
}

/// `{"data": [{"index": i, "embedding": [..] or "base64"}]}`, in index order.
fn openai_embeddings(answer: &Value) -> Result<Answer, String> {
    let mut data: Vec<(u64, Vec<f64>)> = field(answer, "data")?
        .as_array()
        .ok_or("data is not an array")?
        .iter()
        .map(|item| {
            let index = field(item, "index")?
                .as_u64()
                .ok_or("index is not a number")?;
            let embedding = match field(item, "embedding")? {
                Value::String(encoded) => base64_f32(encoded)?,
                other => numbers(other)?,
            };
            Ok((index, embedding))
        })
        .collect::<Result<_, String>>()?;
    data.sort_by_key(|(index, _)| *index);
    Ok(Answer::Embeddings(
        data.into_iter().map(|(_, v)| v).collect(),
    ))
}

/// Little-endian f32s in standard base64 (OpenAI's `encoding_format: base64`).
fn base64_f32(text: &str) -> Result<Vec<f64>, String> {
    let mut bytes = Vec::with_capacity(text.len() / 4 * 3);
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("{:?} is not base64", char::from(c))),
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((buffer >> bits) as u8);
        }
    }
    if bytes.len() % 4 != 0 {
        return Err(format!("{} bytes are not whole f32s", bytes.len()));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect())
}

/// KServe v2 `outputs`: `probabilities` (classes by index) or `embedding`, `[n, width]`.
fn v2_outputs(answer: &Value) -> Result<Answer, String> {
    let outputs = field(answer, "outputs")?
        .as_array()
        .ok_or("outputs is not an array")?;
    let tensor = |name: &str| {
        outputs
            .iter()
            .find(|o| o.get("name") == Some(&Value::from(name)))
    };
    let rows = |output: &Value| -> Result<Vec<Vec<f64>>, String> {
        let shape = numbers(field(output, "shape")?)?;
        let data = numbers(field(output, "data")?)?;
        let width = match shape[..] {
            [n, width] if n * width == data.len() as f64 && width >= 1.0 => width as usize,
            [n, width] if n == 0.0 || width == 0.0 => return Ok(Vec::new()),
            _ => {
                return Err(format!(
                    "shape {shape:?} does not hold {} values",
                    data.len()
                ));
            }
        };
        Ok(data.chunks(width).map(<[f64]>::to_vec).collect())
    };
    if let Some(output) = tensor("probabilities") {
        let inputs = rows(output)?;
        return Ok(Answer::Labels(
            inputs
                .into_iter()
                .map(|scores| ranked((0..scores.len()).map(|i| i.to_string()), scores))
                .collect(),
        ));
    }
    if let Some(output) = tensor("embedding") {
        return Ok(Answer::Embeddings(rows(output)?));
    }
    Err("no probabilities or embedding output (binary outputs are not compared)".into())
}

/// The `data:` payloads of a server-sent event stream.
fn events(body: &[u8]) -> Result<Vec<&str>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    Ok(text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| data.strip_prefix(' ').unwrap_or(data))
        .collect())
}

fn is_event_stream(body: &[u8]) -> bool {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    start.is_some_and(|i| body[i..].starts_with(b"data:") || body[i..].starts_with(b":"))
}

/// `data: {"token": {"text": ..}, ..}` per token; an `error` event is a failed answer.
fn generate_stream(body: &[u8]) -> Result<Answer, String> {
    let mut text = String::new();
    for data in events(body)? {
        let event: Value =
            serde_json::from_str(data).map_err(|e| format!("event not JSON: {e}"))?;
        if let Some(error) = event.get("error") {
            return Err(format!("the stream failed: {error}"));
        }
        if let Some(whole) = event.get("generated_text").and_then(Value::as_str) {
            text = whole.to_string();
            continue;
        }
        text.push_str(&string(field(field(&event, "token")?, "text")?)?);
    }
    Ok(Answer::Texts(vec![text]))
}

/// OpenAI `choices`, whole (`whole` is where a choice's text is) or streamed (`delta` is where a
/// chunk's text is, appended per choice index until `[DONE]`).
fn choices(body: &[u8], whole: &[&str], delta: &[&str]) -> Result<Answer, String> {
    let at = |value: &Value, path: &[&str]| -> Option<String> {
        path.iter()
            .try_fold(value, |v, name| v.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let mut texts: Vec<(u64, String)> = Vec::new();
    let mut add = |choice: &Value, text: Option<String>| -> Result<(), String> {
        let index = field(choice, "index")?
            .as_u64()
            .ok_or("index is not a number")?;
        let text = text.unwrap_or_default();
        match texts.iter_mut().find(|(i, _)| *i == index) {
            Some((_, existing)) => existing.push_str(&text),
            None => texts.push((index, text)),
        }
        Ok(())
    };
    if is_event_stream(body) {
        for data in events(body)? {
            if data.trim() == "[DONE]" {
                break;
            }
            let event: Value =
                serde_json::from_str(data).map_err(|e| format!("event not JSON: {e}"))?;
            if let Some(error) = event.get("error") {
                return Err(format!("the stream failed: {error}"));
            }
            for choice in field(&event, "choices")?
                .as_array()
                .ok_or("choices is not an array")?
            {
                add(choice, at(choice, delta))?;
            }
        }
    } else {
        let answer = json(body)?;
        for choice in field(&answer, "choices")?
            .as_array()
            .ok_or("choices is not an array")?
        {
            let text =
                at(choice, whole).ok_or_else(|| format!("a choice has no {}", whole.join(".")))?;
            add(choice, Some(text))?;
        }
    }
    texts.sort_by_key(|(index, _)| *index);
    Ok(Answer::Texts(texts.into_iter().map(|(_, t)| t).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(route: &str, body: Value) -> Result<Answer, String> {
        parse_answer(route, body.to_string().as_bytes())
    }

    #[test]
    fn classifications_are_ranked_by_score() {
        let answer = parse(
            "/predict",
            json!({"labels": ["neg", "pos", "mid"], "probabilities": [[0.2, 0.7, 0.1], [0.4, 0.2, 0.4]], "predictions": ["pos", "neg"]}),
        )
        .unwrap();
        assert_eq!(
            answer,
            Answer::Labels(vec![
                vec![
                    ("pos".into(), 0.7),
                    ("neg".into(), 0.2),
                    ("mid".into(), 0.1)
                ],
                vec![
                    ("neg".into(), 0.4),
                    ("mid".into(), 0.4),
                    ("pos".into(), 0.2)
                ],
            ])
        );
        let v2 = parse(
            "/v2/models/{name}/infer",
            json!({"outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["b", "a"]},
                {"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [0.1, 0.9, 0.8, 0.2]}
            ]}),
        )
        .unwrap();
        assert_eq!(
            v2,
            Answer::Labels(vec![
                vec![("1".into(), 0.9), ("0".into(), 0.1)],
                vec![("0".into(), 0.8), ("1".into(), 0.2)],
            ])
        );
        assert!(
            parse(
                "/predict",
                json!({"labels": ["a"], "probabilities": [[0.1, 0.9]]})
            )
            .is_err()
        );
    }

    #[test]
    fn embeddings_in_every_encoding() {
        let expected = Answer::Embeddings(vec![vec![1.0, -2.0], vec![0.5, 0.0]]);
        assert_eq!(
            parse("/embed", json!({"embeddings": [[1.0, -2.0], [0.5, 0.0]]})).unwrap(),
            expected
        );
        // Out of index order, one float and one base64 (1.0 is "AACAPw==").
        let b64 = crate::http::openai::base64_f32(&[0.5, 0.0]);
        assert_eq!(
            parse(
                "/v1/embeddings",
                json!({"data": [{"index": 1, "embedding": b64}, {"index": 0, "embedding": [1.0, -2.0]}]})
            )
            .unwrap(),
            expected
        );
        assert_eq!(base64_f32("AACAPw==").unwrap(), vec![1.0]);
        assert!(base64_f32("AACA").is_err());
        assert!(base64_f32("AA*A").is_err());
        assert_eq!(
            parse(
                "/v2/models/{name}/versions/{version}/infer",
                json!({"outputs": [{"name": "embedding", "shape": [2, 2], "data": [1.0, -2.0, 0.5, 0.0]}]})
            )
            .unwrap(),
            expected
        );
        assert!(
            parse(
                "/v2/models/{name}/infer",
                json!({"outputs": [{"name": "embedding", "shape": [2, 3], "data": [1.0]}]})
            )
            .is_err()
        );
    }

    #[test]
    fn texts_whole_and_streamed() {
        assert_eq!(
            parse("/generate", json!({"generated_text": "hi there"})).unwrap(),
            Answer::Texts(vec!["hi there".into()])
        );
        let stream = "data: {\"index\":0,\"token\":{\"id\":1,\"text\":\"hi\"}}\n\n\
                      data: {\"index\":1,\"token\":{\"id\":2,\"text\":\" there\"}}\n\n";
        assert_eq!(
            parse_answer("/generate_stream", stream.as_bytes()).unwrap(),
            Answer::Texts(vec!["hi there".into()])
        );
        assert!(parse_answer("/generate_stream", b"data: {\"error\":\"boom\"}\n\n").is_err());
        assert_eq!(
            parse(
                "/v1/completions",
                json!({"choices": [{"index": 1, "text": "b"}, {"index": 0, "text": "a"}]})
            )
            .unwrap(),
            Answer::Texts(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            parse("/v1/chat/completions", json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "yo"}}]})).unwrap(),
            Answer::Texts(vec!["yo".into()])
        );
        let chat = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
                    data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"y\"}}]}\n\n\
                    data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"o\"},\"finish_reason\":null}]}\n\n\
                    data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
                    data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n\
                    data: [DONE]\n\n";
        assert_eq!(
            parse_answer("/v1/chat/completions", chat.as_bytes()).unwrap(),
            Answer::Texts(vec!["yo".into()])
        );
        let completion = "data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\ndata: {\"choices\":[{\"index\":0,\"text\":\"b\"}]}\n\ndata: [DONE]\n\n";
        assert_eq!(
            parse_answer("/v1/completions", completion.as_bytes()).unwrap(),
            Answer::Texts(vec!["ab".into()])
        );
        assert!(parse_answer("/v1/completions", b"not json").is_err());
        assert!(parse_answer("/unknown", b"{}").is_err());
    }
}

//! Property tests of request parsing and tokenization: arbitrary texts survive the JSON round trip,
//! tokenize without error within the model's limit, and arbitrary bytes never panic the parser.

mod common;

use std::sync::OnceLock;

use common::minilm_dir;
use lexserve_sidecar::encoder::tokenize::TextTokenizer;
use lexserve_sidecar::http::body::decode;
use lexserve_sidecar::http::native::TextsRequest;
use proptest::prelude::*;

const LIMIT: usize = 32;

fn tokenizer() -> &'static TextTokenizer {
    static TOKENIZER: OnceLock<TextTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        TextTokenizer::load(&minilm_dir().join("tokenizer.json"), LIMIT).expect("tokenizer")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn texts_round_trip_and_tokenize_within_the_limit(texts in prop::collection::vec(any::<String>(), 0..6)) {
        let body = serde_json::to_vec(&serde_json::json!({"texts": texts})).unwrap();
        let parsed: TextsRequest = decode(&body).expect("valid JSON of strings parses");
        prop_assert_eq!(&parsed.texts, &texts);
        for text in &parsed.texts {
            let encoded = tokenizer().encode(text).expect("any string tokenizes");
            prop_assert!(encoded.len() <= LIMIT);
            prop_assert!(encoded.len() >= 2, "[CLS] and [SEP] are always there");
            prop_assert_eq!(encoded.ids.len(), encoded.type_ids.len());
            if encoded.len() < LIMIT {
                prop_assert!(!encoded.truncated);
            }
        }
    }

    #[test]
    fn long_texts_are_truncated_and_say_so(words in prop::collection::vec("[a-z]{1,8}", 40..80)) {
        let text = words.join(" ");
        let encoded = tokenizer().encode(&text).unwrap();
        prop_assert_eq!(encoded.len(), LIMIT);
        prop_assert!(encoded.truncated);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let result = decode::<TextsRequest>(&bytes);
        if let Err(error) = result {
            let status = error.status().as_u16();
            prop_assert!(status == 400 || status == 422, "status {}", status);
        }
    }
}

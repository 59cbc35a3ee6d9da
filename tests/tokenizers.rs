//! Each family's `tokenizer.json` (tests/fixtures/tokenizers, built by transformers' own tokenizer
//! classes: WordPiece for BERT / DistilBERT / ELECTRA, byte-level BPE for RoBERTa / GPT-2, Unigram
//! for ALBERT, GPT-1's `</w>` BPE) loads in kiln and encodes texts and pairs, with and without
//! special tokens, to the ids, token types and masks transformers gives.
use kiln::model::tokenize::load_tokenizer;
use std::path::PathBuf;

fn ints(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn every_family_tokenizer_matches_transformers() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers");
    let mut families = 0;
    for family in ["bert", "roberta", "albert", "distilbert", "electra", "openai_gpt", "gpt2"] {
        let dir = root.join(family);
        let tok = load_tokenizer(dir.join("tokenizer.json")).unwrap_or_else(|e| panic!("{family}: {e}"));
        let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        let cases = expected["cases"].as_array().unwrap();
        assert!(cases.len() >= 10, "{family}: {} cases", cases.len());
        for c in cases {
            let text = c["text"].as_str().unwrap();
            let enc = match c.get("text_pair").and_then(|p| p.as_str()) {
                Some(pair) => tok.encode((text, pair), true),
                None => tok.encode(text, true),
            }
            .unwrap();
            let what = format!("{family}: {text:?} {:?}", c.get("text_pair"));
            assert_eq!(enc.get_ids(), ints(&c["input_ids"]).as_slice(), "{what}: input_ids");
            assert_eq!(enc.get_type_ids(), ints(&c["token_type_ids"]).as_slice(), "{what}: token_type_ids");
            assert_eq!(enc.get_attention_mask(), ints(&c["attention_mask"]).as_slice(), "{what}: attention_mask");
            if c.get("text_pair").is_none() {
                let plain = tok.encode(text, false).unwrap();
                assert_eq!(plain.get_ids(), ints(&c["no_special_tokens_ids"]).as_slice(), "{what}: without special tokens");
            }
        }
        families += 1;
    }
    assert_eq!(families, 7);
}

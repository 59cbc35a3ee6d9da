//! Each family's `tokenizer.json` (tests/fixtures/tokenizers, built by transformers' own tokenizer
//! classes: WordPiece for BERT / DistilBERT / ELECTRA, byte-level BPE for RoBERTa / GPT-2, Unigram
//! for ALBERT, GPT-1's `</w>` BPE) loads in kiln and encodes texts and pairs, with and without
//! special tokens, to the ids, token types and masks transformers gives.
//!
//! The tokenizers kiln trains: linear on text without whitespace (pre-tokenized pieces are capped),
//! and the cap changes nothing on ordinary text (same vocabulary and ids as the uncapped
//! pre-tokenizers GPT-2 and BERT use).
use kiln::model::tokenize::{self, load_tokenizer, training_parts, Tokenizer, TokenizerKind, MAX_BPE_PIECE, MAX_WORDPIECE_PIECE};
use std::path::PathBuf;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

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

/// `n` pseudo-random lower-case letters (a fixed LCG), no whitespace at all.
fn letters(n: usize, seed: u64) -> String {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (b'a' + ((s >> 33) % 26) as u8) as char
        })
        .collect()
}

/// The pieces `pre` cuts `text` into (in the pre-tokenizer's own alphabet: byte-level characters
/// for `ByteLevel`).
fn pieces(pre: &impl PreTokenizer, text: &str) -> Vec<String> {
    let mut pts = PreTokenizedString::from(text);
    pre.pre_tokenize(&mut pts).unwrap();
    pts.get_splits(OffsetReferential::Original, OffsetType::Char).into_iter().map(|(s, _, _)| s.to_string()).collect()
}

fn pre_tokenizer(tok: &Tokenizer) -> &tokenizers::PreTokenizerWrapper {
    tok.get_pre_tokenizer().expect("a trained tokenizer has a pre-tokenizer")
}

// Training was quadratic in the longest run without whitespace (one pre-tokenized "word" of
// 1 MB: every merge rewrote it once per occurrence of the pair, so 300 KB took ~40 s). The cap
// bounds every piece, which is what makes training and encoding linear: asserted as that bound,
// not as a time.
#[test]
fn training_on_a_megabyte_without_whitespace_caps_pieces_and_round_trips() {
    let text = letters(1 << 20, 7);

    let bpe = tokenize::train_bpe_from_texts(&[&text], 300).unwrap();
    assert_eq!(bpe.get_vocab_size(true), 300, "the merges were learned");
    let ps = pieces(pre_tokenizer(&bpe), &text);
    assert_eq!(ps.concat().chars().count(), text.len(), "pieces cover the text (one byte-level character per byte)");
    assert!(ps.iter().all(|p| p.chars().count() <= MAX_BPE_PIECE), "longest piece {}", ps.iter().map(|p| p.chars().count()).max().unwrap());
    assert_eq!(ps.len(), text.len().div_ceil(MAX_BPE_PIECE));
    assert!(bpe.get_vocab(false).keys().all(|t| t.chars().count() <= MAX_BPE_PIECE));
    // the data pipeline's encoding, and back
    let ids = kiln::model::data::encode_stream(&bpe, &text, None).unwrap();
    assert!(ids.len() < text.len(), "{} ids for {} bytes: merges apply", ids.len(), text.len());
    assert_eq!(bpe.decode(&ids, false).unwrap(), text, "decode(encode(x)) == x");

    let wp = tokenize::train_wordpiece_from_texts(&[&text], 300).unwrap();
    assert_eq!(wp.get_vocab_size(true), 300);
    let ps = pieces(pre_tokenizer(&wp), &text);
    assert_eq!(ps.concat(), text);
    assert!(ps.iter().all(|p| p.chars().count() <= MAX_WORDPIECE_PIECE), "longest piece {}", ps.iter().map(|p| p.chars().count()).max().unwrap());
    // Each piece is short enough for WordPiece (no whole-run [UNK]): the tokens, `##` dropped,
    // spell the text again. (WordPiece encoding costs O(piece²) per character; a slice keeps the
    // test short.)
    let slice = &text[..20_000];
    let enc = wp.encode(slice, false).unwrap();
    let unk = wp.token_to_id("[UNK]").unwrap();
    assert!(!enc.get_ids().contains(&unk));
    let spelled: String = enc.get_tokens().iter().map(|t| t.trim_start_matches("##")).collect();
    assert_eq!(spelled, slice);
}

/// Ordinary English text with what GPT-2's regex and BERT's pre-tokenizer treat specially:
/// contractions, numbers, punctuation runs, several spaces, blank lines, CRLF, tabs, accents.
const ENGLISH: &str = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n\
First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n\
First Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.\n\n\
All:\nWe know't, we know't.  Let us kill him, and we'll have corn at our own price.\r\n\
Is't a verdict?\t No more talking on't; let it be done: away, away!\n \n\
Second Citizen:\nOne word, good citizens -- 1,000 words, 42 times... naïve café, 3.14!\n\
   What authority surfeits on would relieve us: if they\nwould yield us but the superfluity, while it were\n\
wholesome, we might guess they relieved us humanely;\nbut they think we are too dear: the leanness that\n\
afflicts us, the object of our misery, is as an\ninventory to particularise their abundance; our\n\
sufferance is a gain to them Let us revenge this with\nour pikes, ere we become rakes: for the gods know I\n\
speak this in hunger for bread, not in thirst for revenge.\n";

/// Trains `model` the way kiln did before the piece cap (one sequence, the uncapped pre-tokenizer).
fn train_reference(mut tok: Tokenizer, trainer: &mut TrainerWrapper, text: &str) -> Tokenizer {
    tok.train(trainer, std::iter::once(text)).unwrap();
    tok
}

#[test]
fn the_piece_cap_changes_nothing_on_ordinary_text() {
    let text = ENGLISH.repeat(3);
    let words = ["the quick brown fox, naïve café!", "We know't, 1,000 words.\n\nAll:\r\n  speak  ", "supercalifragilistic expialidocious"];

    // GPT-2: the previous skeleton (ByteLevel alone) trained on the whole text as one sequence
    let mut old = Tokenizer::new(BPE::default());
    old.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    old.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(400)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from(tokenize::EOT, true)])
        .build()
        .into();
    let old = train_reference(old, &mut trainer, &text);
    let new = tokenize::train_bpe_from_texts(&[&text], 400).unwrap();
    assert_eq!(new.get_vocab(true), old.get_vocab(true), "same vocabulary");
    for t in words.iter().copied().chain([text.as_str()]) {
        assert_eq!(pieces(pre_tokenizer(&new), t), pieces(&ByteLevel::default().add_prefix_space(false), t), "{t:?}");
        assert_eq!(new.encode(t, false).unwrap().get_ids(), old.encode(t, false).unwrap().get_ids(), "{t:?}");
    }

    // BERT: BertPreTokenizer alone. The tokenizers crate's WordPiece training is not deterministic
    // (`##` ids follow a hash map's order, and ties between merges follow the ids), so rather than
    // comparing with a second training: the capped pre-tokenizer gives the uncapped one's pieces
    // (so the trainer counts the same words), and the trained model encodes the same through both.
    let new = tokenize::train_wordpiece_from_texts(&[&text], 300).unwrap();
    let mut old = new.clone();
    old.with_pre_tokenizer(Some(BertPreTokenizer));
    for t in words.iter().copied().chain([text.as_str()]) {
        assert_eq!(pieces(pre_tokenizer(&new), t), pieces(&BertPreTokenizer, t), "{t:?}");
        assert_eq!(new.encode(t, false).unwrap().get_ids(), old.encode(t, false).unwrap().get_ids(), "{t:?}");
    }
}

// Training feeds the text to the trainer in parts (cut before a `\n` that non-whitespace follows);
// each pre-tokenizer must cut the parts into exactly the pieces of the whole text, or the counted
// words, and so the vocabulary, would change.
#[test]
fn training_parts_pre_tokenize_like_the_whole_text() {
    let cases = [
        ENGLISH,
        "a \nb",
        "a  \n\nb\n",
        "\nstart",
        "x\r\ny\r\n\r\nz",
        "tab\t\nnext \t \n end\n\n\n",
        "word's\nyou'll\n'tis\n",
        "\u{3000}\nfull\u{3000}width\n\u{3000}",
        "",
    ];
    let tok_bpe = tokenize::train_bpe_from_texts(&["ab ab\nab"], 260).unwrap();
    let tok_wp = tokenize::train_wordpiece_from_texts(&["ab ab\nab"], 40).unwrap();
    for text in cases {
        let parts = training_parts(text);
        assert_eq!(parts.concat(), text, "{text:?}");
        assert!(parts.iter().all(|p| !p.is_empty()));
        for (name, tok) in [("bpe", &tok_bpe), ("wordpiece", &tok_wp)] {
            let pre = pre_tokenizer(tok);
            let by_part: Vec<String> = parts.iter().flat_map(|p| pieces(pre, p)).collect();
            assert_eq!(by_part, pieces(pre, text), "{name}: {text:?} in parts {parts:?}");
        }
    }
    assert_eq!(training_parts("a\nb\n\nc").len(), 3, "cut before each \\n followed by text");
    assert_eq!(training_parts(&letters(1000, 1)).len(), 1);
}

#[test]
fn a_saved_trained_tokenizer_loads_and_keeps_the_cap() {
    let d = std::env::temp_dir().join(format!("kiln-tok-cap-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let text = format!("{} {}", ENGLISH, letters(5000, 3));
    for kind in [TokenizerKind::Bpe, TokenizerKind::WordPiece] {
        let tok = tokenize::train_from_texts(kind, &[&text], 300, false).unwrap();
        let path = d.join("tokenizer.json");
        tokenize::save_tokenizer(&tok, &path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let pre = &json["pre_tokenizer"];
        assert_eq!(pre["type"], "Sequence", "{kind:?}: {pre}");
        assert_eq!(pre["pretokenizers"][1]["type"], "Split", "{kind:?}: {pre}");
        let again = load_tokenizer(&path).unwrap();
        let a = again.encode(text.as_str(), false).unwrap();
        assert_eq!(a.get_ids(), tok.encode(text.as_str(), false).unwrap().get_ids(), "{kind:?}");
        let cap = if kind == TokenizerKind::Bpe { MAX_BPE_PIECE } else { MAX_WORDPIECE_PIECE };
        assert!(pieces(pre_tokenizer(&again), &text).iter().all(|p| p.chars().count() <= cap), "{kind:?}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}


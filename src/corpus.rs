//! The default training corpus of `kiln train` with no arguments: short English sentences generated
//! from a small hand-written grammar with a seeded generator. Deterministic, so the default run's
//! loss curve is comparable between machines; varied enough that a tiny GPT visibly learns it.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const PEOPLE: &[&str] = &[
    "the baker", "the old sailor", "a young clerk", "the gardener", "my neighbour", "the captain", "a tired miner",
    "the weaver", "her brother", "the schoolmaster", "a quiet stranger", "the ferryman", "the blacksmith", "our cook",
];
const THINGS: &[&str] = &[
    "a lantern", "the letter", "a basket of apples", "the old map", "a wooden box", "the silver key", "a loaf of bread",
    "the broken clock", "a bundle of rope", "the green coat", "a jar of honey", "the heavy anchor", "a small bell",
];
const PLACES: &[&str] = &[
    "the harbour", "the market", "the hill", "the river", "the mill", "the square", "the forest road", "the chapel",
    "the bridge", "the orchard", "the lighthouse", "the station", "the north field",
];
const VERBS: &[&str] = &["carried", "found", "mended", "sold", "hid", "lost", "painted", "opened", "dropped", "kept"];
const MOVES: &[&str] = &["walked to", "ran past", "waited near", "climbed", "crossed", "left", "returned to"];
const TIMES: &[&str] = &["at dawn", "after supper", "before the rain", "in the evening", "on sunday", "at noon", "late at night"];
const MOODS: &[&str] = &["happy", "worried", "silent", "cheerful", "angry", "patient", "curious"];

fn pick<'a>(rng: &mut ChaCha8Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn sentence(rng: &mut ChaCha8Rng) -> String {
    let p = pick(rng, PEOPLE);
    match rng.random_range(0..5) {
        0 => format!("{} {} {} {}.", capitalize(p), pick(rng, VERBS), pick(rng, THINGS), pick(rng, TIMES)),
        1 => format!("{} {} {} and {} {}.", capitalize(p), pick(rng, MOVES), pick(rng, PLACES), pick(rng, VERBS), pick(rng, THINGS)),
        2 => format!("{} {}, {} was {}.", capitalize(pick(rng, TIMES)), p, "and everyone", pick(rng, MOODS)),
        3 => format!("{} was {} because {} {} {}.", capitalize(p), pick(rng, MOODS), pick(rng, PEOPLE), pick(rng, VERBS), pick(rng, THINGS)),
        _ => format!("\"Where is {}?\" asked {}. \"Near {},\" said {}.", pick(rng, THINGS), p, pick(rng, PLACES), pick(rng, PEOPLE)),
    }
}

/// About `chars` characters of generated text: documents (paragraphs separated by a blank line)
/// of 3-6 sentences, one sentence per line, as BERT's next-sentence data expects.
pub fn default_corpus(seed: u64, chars: usize) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = String::with_capacity(chars + 256);
    while out.len() < chars {
        let n = rng.random_range(3..7);
        let para: Vec<String> = (0..n).map(|_| sentence(&mut rng)).collect();
        out.push_str(&para.join("\n"));
        out.push_str("\n\n");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn deterministic_and_sized() {
        let a = super::default_corpus(7, 10_000);
        assert_eq!(a, super::default_corpus(7, 10_000));
        assert!(a.len() >= 10_000 && a.len() < 11_000);
        assert_ne!(a, super::default_corpus(8, 10_000));
    }
}

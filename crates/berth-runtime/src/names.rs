//! Random container names in Docker's `adjective_surname` style.

const ADJECTIVES: &[&str] = &[
    "admiring",
    "agile",
    "amazing",
    "bold",
    "brave",
    "busy",
    "calm",
    "clever",
    "cool",
    "crisp",
    "dazzling",
    "eager",
    "elastic",
    "epic",
    "fervent",
    "focused",
    "gallant",
    "gentle",
    "happy",
    "hopeful",
    "jolly",
    "keen",
    "kind",
    "laughing",
    "lucid",
    "modest",
    "nifty",
    "nimble",
    "optimistic",
    "peaceful",
    "quirky",
    "relaxed",
    "serene",
    "sharp",
    "stoic",
    "sweet",
    "tender",
    "trusting",
    "vibrant",
    "wizardly",
    "zealous",
];

const SURNAMES: &[&str] = &[
    "albattani",
    "allen",
    "archimedes",
    "babbage",
    "bardeen",
    "bell",
    "bohr",
    "cerf",
    "curie",
    "darwin",
    "dijkstra",
    "einstein",
    "euler",
    "feynman",
    "fermi",
    "franklin",
    "galileo",
    "gauss",
    "hamilton",
    "hopper",
    "hypatia",
    "johnson",
    "kepler",
    "knuth",
    "lamport",
    "lovelace",
    "mccarthy",
    "meitner",
    "noether",
    "pascal",
    "ritchie",
    "shannon",
    "thompson",
    "torvalds",
    "turing",
    "wozniak",
    "yalow",
];

/// A fresh random name; `attempt` > 0 appends a digit, as Docker does after a collision.
pub fn random_name(attempt: u32) -> String {
    let bytes = berth_store::random_hex(4);
    let n = u32::from_str_radix(&bytes, 16).unwrap_or(0) as usize;
    let base = format!(
        "{}_{}",
        ADJECTIVES[n % ADJECTIVES.len()],
        SURNAMES[(n / 97) % SURNAMES.len()]
    );
    if attempt == 0 {
        base
    } else {
        format!("{base}{}", n % 10)
    }
}

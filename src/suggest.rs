//! "Did you mean": the known word nearest to a typo, by edit distance. A leaf with no
//! dependencies (the condition parser and the fuzz target use it too).

/// The candidate nearest to `word` by edit distance, when near enough to be a typo
/// (at most 2 edits, and fewer than half the word), and not `word` itself.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = 2.min(word.chars().count().saturating_sub(1) / 2 + 1);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d > 0 && *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_typos_only() {
        assert_eq!(closest("prefx", &["prefix", "contains"]), Some("prefix"));
        assert_eq!(
            closest("virtual_host", &["virtual_hosts", "routes"]),
            Some("virtual_hosts")
        );
        assert_eq!(closest("bogus", &["name", "port"]), None);
        assert_eq!(closest("has", &["has"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}

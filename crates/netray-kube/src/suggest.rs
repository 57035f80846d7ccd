//! "Did you mean": the names closest to a misspelt one (pods, Services, nodes, contexts).

/// Edit distance (Levenshtein, by characters) between `a` and `b`.
pub fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The closest of `candidates` to `word` (up to three as close as each other), when close
/// enough: at most a third of its length apart (2 edits allowed for short words); empty when
/// nothing is close.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .collect();
    scored.sort();
    scored.dedup();
    let best = scored.first().map(|(d, _)| *d);
    scored
        .into_iter()
        .take_while(|(d, _)| Some(*d) == best)
        .take(3)
        .map(|(_, c)| c)
        .collect()
}

/// `; did you mean pod/default/web-0?` (each candidate through `show`), or nothing.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    show: impl Fn(&str) -> String,
) -> String {
    let c = closest(word, candidates);
    match c.as_slice() {
        [] => String::new(),
        [one] => format!("; did you mean {}?", show(one)),
        many => format!(
            "; did you mean {}?",
            many.iter()
                .map(|c| show(c))
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested() {
        assert_eq!(distance("kind-deb", "kind-dev"), 1);
        assert_eq!(distance("", "abc"), 3);
        let pods = ["default/web-0", "default/web-1", "kube-system/coredns-1"];
        assert_eq!(
            closest("default/wbe-0", pods.iter().copied()),
            vec!["default/web-0"]
        );
        assert!(closest("zzz", pods.iter().copied()).is_empty());
        assert_eq!(
            did_you_mean("kind-deb", ["kind-dev", "prod"], |c| format!("\"{c}\"")),
            "; did you mean \"kind-dev\"?"
        );
    }
}

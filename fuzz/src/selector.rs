//! `selector`: selectors (`tessera_core::selector`) from any text, and the
//! matching rule of registration entries.
//!
//! Checked: `type:value` parses exactly when the type is non-empty and made of
//! letters, digits, `_` and `-`, the value is non-empty, and the whole is at
//! most 4096 bytes; the value keeps every later `:`. A parsed selector prints
//! back to the input, and parses back to itself from text and JSON. The
//! matching rule: an entry's selectors match an observed set exactly when
//! they are not empty and every one of them is in the set (each line of the
//! input is one selector; the first half are the entry's, the rest observed).

use tessera_core::selector::{MAX_SELECTOR_LENGTH, Selector, SelectorSet, matches};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    one(text);
    let lines: Vec<&str> = text.lines().collect();
    let parsed: Vec<Selector> = lines.iter().filter_map(|l| l.parse().ok()).collect();
    for l in &lines {
        one(l);
    }
    let (entry, observed) = parsed.split_at(parsed.len() / 2);
    let observed: SelectorSet = observed.iter().cloned().collect();
    let want = !entry.is_empty() && entry.iter().all(|s| observed.iter().any(|o| o == s));
    assert_eq!(
        matches(entry, &observed),
        want,
        "matching {entry:?} against {observed:?}"
    );
    let everything: SelectorSet = parsed.iter().cloned().collect();
    if !parsed.is_empty() {
        assert!(
            matches(&parsed, &everything),
            "an entry does not match its own selectors"
        );
    }
}

fn one(text: &str) {
    let parsed = text.parse::<Selector>();
    let want = text.split_once(':').filter(|(kind, value)| {
        !kind.is_empty()
            && !value.is_empty()
            && text.len() <= MAX_SELECTOR_LENGTH
            && kind
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    assert_eq!(
        parsed.as_ref().ok().map(|s| (s.kind(), s.value())),
        want,
        "{text:?} parsed as {parsed:?}"
    );
    let Ok(sel) = parsed else {
        return;
    };
    assert_eq!(
        sel.to_string(),
        text,
        "a selector prints otherwise than given"
    );
    assert_eq!(Selector::new(sel.kind(), sel.value()).as_ref(), Ok(&sel));
    let json = serde_json::to_string(&sel).expect("serialising a selector");
    assert_eq!(
        serde_json::from_str::<Selector>(&json).ok().as_ref(),
        Some(&sel),
        "JSON round trip"
    );
}

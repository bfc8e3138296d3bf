//! Where a key is written in a TOML file, so that a value that parses but breaks a
//! rule (a timeout of zero, an ID from another trust domain) is reported at its line
//! like a syntax error is.

use toml::de::{DeTable, DeValue};

/// The line and column (from 1) where the dotted `key` (`limits.idle_timeout`) is
/// written in `text`: the key of a value, or the name in a table's header. `None` when
/// the text does not set it (a default, an override or an environment variable did)
/// or does not parse.
pub fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let segments: Vec<&str> = key.split('.').collect();
    let mut at = None;
    for (i, seg) in segments.iter().enumerate() {
        let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *seg)?;
        at = Some(k.span().start);
        if i + 1 < segments.len() {
            match v.get_ref() {
                DeValue::Table(t) => table = t,
                _ => return None,
            }
        }
    }
    at.map(|offset| line_col(text, offset))
}

/// The 1-based line and column of byte `offset` in `text` (the loader's errors use
/// it too).
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_at_their_line() {
        let text = "trust_domain = \"e.org\"\n\n[limits]\n  idle_timeout = \"0s\"\n\
                    [node_attestors.tpm_devid]\ndevid_ca_bundle = \"/x\"\n";
        assert_eq!(locate(text, "trust_domain"), Some((1, 1)));
        assert_eq!(locate(text, "limits"), Some((3, 2)));
        assert_eq!(locate(text, "limits.idle_timeout"), Some((4, 3)));
        assert_eq!(locate(text, "node_attestors.tpm_devid"), Some((5, 17)));
        assert_eq!(
            locate(text, "node_attestors.tpm_devid.devid_ca_bundle"),
            Some((6, 1))
        );
        assert_eq!(locate(text, "limits.max_connections"), None);
        assert_eq!(locate(text, "trust_domain.x"), None);
        assert_eq!(locate("a = [", "a"), None);
    }
}

//! `spiffe_id`: SPIFFE IDs and trust domain names (`tessera_core::spiffe_id`),
//! from any text.
//!
//! Checked: the parser accepts exactly what the SPIFFE ID standard allows, as
//! written again here from the standard (scheme `spiffe`, case-insensitive;
//! a trust domain of lower-case letters, digits, `.`, `-` and `_`, taken in
//! either case, at most 255 bytes; path segments of letters, digits, `.`, `-`
//! and `_`, never `.` or `..`, no trailing `/`; no port, user info, query,
//! fragment or percent-encoding; 2048 bytes in all). An accepted ID prints in
//! canonical form (lower-case scheme and trust domain, path as given) and
//! parses back to itself, from text and from JSON; its trust domain and path
//! put together make the same ID; `is_reserved` is the `/spire` namespace.
//! The same for trust domain names, and for IDs built from a trust domain and
//! a path.

use tessera_core::spiffe_id::{
    MAX_SPIFFE_ID_LENGTH, MAX_TRUST_DOMAIN_LENGTH, RESERVED_PATH, SpiffeId, TrustDomain,
};

fn td_ok(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= MAX_TRUST_DOMAIN_LENGTH
        && td
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn path_ok(path: &str) -> bool {
    if path.is_empty() {
        return true;
    }
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    rest.split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    })
}

/// The standard's grammar: (trust domain, path) of a valid ID.
fn reference(input: &str) -> Option<(String, String)> {
    if input.len() > MAX_SPIFFE_ID_LENGTH {
        return None;
    }
    let scheme = input.get(..9)?;
    if !scheme.eq_ignore_ascii_case("spiffe://") {
        return None;
    }
    let rest = &input[9..];
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    (td_ok(td) && path_ok(path)).then(|| (td.to_ascii_lowercase(), path.to_owned()))
}

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    id(text);
    trust_domain(text);
    id_from_parts(text);
}

fn id(text: &str) {
    let parsed = SpiffeId::new(text);
    let want = reference(text);
    assert_eq!(
        parsed.is_ok(),
        want.is_some(),
        "SpiffeId::new({text:?}) = {parsed:?}, the standard says {want:?}"
    );
    let (Ok(id), Some((td, path))) = (parsed, want) else {
        return;
    };
    assert_eq!(id.trust_domain().name(), td);
    assert_eq!(id.path(), path);
    let printed = id.to_string();
    assert_eq!(printed, format!("spiffe://{td}{path}"));
    assert_eq!(SpiffeId::new(&printed).as_ref(), Ok(&id), "print/parse");
    let json = serde_json::to_string(&id).expect("serialising an ID");
    assert_eq!(
        serde_json::from_str::<SpiffeId>(&json).ok().as_ref(),
        Some(&id),
        "JSON round trip"
    );
    assert_eq!(
        id.trust_domain().id(id.path()).as_ref().ok(),
        (!path.is_empty()).then_some(&id),
        "trust domain + path"
    );
    assert_eq!(id.is_trust_domain_id(), path.is_empty());
    assert!(id.is_member_of(id.trust_domain()));
    let reserved = path == RESERVED_PATH || path.starts_with(&format!("{RESERVED_PATH}/"));
    assert_eq!(id.is_reserved(), reserved, "is_reserved({id})");
}

fn trust_domain(text: &str) {
    let parsed = TrustDomain::new(text);
    let want = match reference(text) {
        Some((td, path)) if path.is_empty() => Some(td),
        Some(_) => None,
        None => td_ok(text).then(|| text.to_ascii_lowercase()),
    };
    assert_eq!(
        parsed.as_ref().ok().map(TrustDomain::name),
        want.as_deref(),
        "TrustDomain::new({text:?}) = {parsed:?}"
    );
    if let Ok(td) = parsed {
        assert_eq!(TrustDomain::new(&td.to_string()).as_ref(), Ok(&td));
        assert_eq!(TrustDomain::new(&td.id_string()).as_ref(), Ok(&td));
        assert_eq!(
            SpiffeId::new(&td.id_string()).map(|i| i.is_trust_domain_id()),
            Ok(true)
        );
    }
}

fn id_from_parts(path: &str) {
    let td = crate::fixtures::trust_domain();
    let built = td.id(path);
    let ok = path.starts_with('/')
        && path_ok(path)
        && "spiffe://".len() + td.name().len() + path.len() <= MAX_SPIFFE_ID_LENGTH;
    assert_eq!(built.is_ok(), ok, "TrustDomain::id({path:?}) = {built:?}");
    if let Ok(id) = built {
        assert_eq!(id.path(), path);
        assert_eq!(SpiffeId::new(&id.to_string()).as_ref(), Ok(&id));
    }
}

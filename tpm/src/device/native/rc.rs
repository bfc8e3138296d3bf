//! TPM response codes (TPM 2.0 Part 2, 6.6): their names for messages, and which of
//! them mean the conversation broke rather than the command failed.

/// TPM_RC_INITIALIZE: the TPM wants TPM2_Startup.
pub(crate) const INITIALIZE: u32 = 0x100;

const FORMAT_ZERO: &[(u32, &str)] = &[
    (0x100, "TPM_RC_INITIALIZE"),
    (0x101, "TPM_RC_FAILURE"),
    (0x103, "TPM_RC_SEQUENCE"),
    (0x120, "TPM_RC_DISABLED"),
    (0x121, "TPM_RC_EXCLUSIVE"),
    (0x124, "TPM_RC_AUTH_TYPE"),
    (0x125, "TPM_RC_AUTH_MISSING"),
    (0x126, "TPM_RC_POLICY"),
    (0x12e, "TPM_RC_TOO_MANY_CONTEXTS"),
    (0x12f, "TPM_RC_AUTH_UNAVAILABLE"),
    (0x130, "TPM_RC_REBOOT"),
    (0x131, "TPM_RC_UNBALANCED"),
    (0x142, "TPM_RC_COMMAND_SIZE"),
    (0x143, "TPM_RC_COMMAND_CODE"),
    (0x144, "TPM_RC_AUTHSIZE"),
    (0x145, "TPM_RC_AUTH_CONTEXT"),
    (0x146, "TPM_RC_NV_RANGE"),
    (0x147, "TPM_RC_NV_SIZE"),
    (0x148, "TPM_RC_NV_LOCKED"),
    (0x149, "TPM_RC_NV_AUTHORIZATION"),
    (0x14a, "TPM_RC_NV_UNINITIALIZED"),
    (0x14b, "TPM_RC_NV_SPACE"),
    (0x14c, "TPM_RC_NV_DEFINED"),
    (0x150, "TPM_RC_BAD_CONTEXT"),
    (0x151, "TPM_RC_CPHASH"),
    (0x152, "TPM_RC_PARENT"),
    (0x153, "TPM_RC_NEEDS_TEST"),
    (0x154, "TPM_RC_NO_RESULT"),
    (0x155, "TPM_RC_SENSITIVE"),
    (0x901, "TPM_RC_CONTEXT_GAP"),
    (0x902, "TPM_RC_OBJECT_MEMORY"),
    (0x903, "TPM_RC_SESSION_MEMORY"),
    (0x904, "TPM_RC_MEMORY"),
    (0x905, "TPM_RC_SESSION_HANDLES"),
    (0x906, "TPM_RC_OBJECT_HANDLES"),
    (0x907, "TPM_RC_LOCALITY"),
    (0x908, "TPM_RC_YIELDED"),
    (0x909, "TPM_RC_CANCELED"),
    (0x90a, "TPM_RC_TESTING"),
    (0x920, "TPM_RC_NV_RATE"),
    (0x921, "TPM_RC_LOCKOUT"),
    (0x922, "TPM_RC_RETRY"),
    (0x923, "TPM_RC_NV_UNAVAILABLE"),
];

const FORMAT_ONE: &[(u32, &str)] = &[
    (0x01, "TPM_RC_ASYMMETRIC"),
    (0x02, "TPM_RC_ATTRIBUTES"),
    (0x03, "TPM_RC_HASH"),
    (0x04, "TPM_RC_VALUE"),
    (0x05, "TPM_RC_HIERARCHY"),
    (0x07, "TPM_RC_KEY_SIZE"),
    (0x08, "TPM_RC_MGF"),
    (0x09, "TPM_RC_MODE"),
    (0x0a, "TPM_RC_TYPE"),
    (0x0b, "TPM_RC_HANDLE"),
    (0x0c, "TPM_RC_KDF"),
    (0x0d, "TPM_RC_RANGE"),
    (0x0e, "TPM_RC_AUTH_FAIL"),
    (0x0f, "TPM_RC_NONCE"),
    (0x10, "TPM_RC_PP"),
    (0x12, "TPM_RC_SCHEME"),
    (0x15, "TPM_RC_SIZE"),
    (0x16, "TPM_RC_SYMMETRIC"),
    (0x17, "TPM_RC_TAG"),
    (0x18, "TPM_RC_SELECTOR"),
    (0x1a, "TPM_RC_INSUFFICIENT"),
    (0x1b, "TPM_RC_SIGNATURE"),
    (0x1c, "TPM_RC_KEY"),
    (0x1d, "TPM_RC_POLICY_FAIL"),
    (0x1f, "TPM_RC_INTEGRITY"),
    (0x20, "TPM_RC_TICKET"),
    (0x21, "TPM_RC_RESERVED_BITS"),
    (0x22, "TPM_RC_BAD_AUTH"),
    (0x23, "TPM_RC_EXPIRED"),
    (0x24, "TPM_RC_POLICY_CC"),
    (0x25, "TPM_RC_BINDING"),
    (0x26, "TPM_RC_CURVE"),
    (0x27, "TPM_RC_ECC_POINT"),
];

/// Whether `rc` is a format-one code (an error about a handle, session or parameter).
fn is_format_one(rc: u32) -> bool {
    rc & 0x80 != 0
}

/// The error number of a format-one code (`TPM_RC_HANDLE` is 0x0b, ...).
pub(crate) fn format_one_code(rc: u32) -> Option<u32> {
    is_format_one(rc).then_some(rc & 0x3f)
}

/// Whether a format-one code is about handle 1 (not a parameter or a session).
pub(crate) fn is_handle_error(rc: u32, code: u32) -> bool {
    format_one_code(rc) == Some(code) && rc & 0x40 == 0 && rc & 0x800 == 0
}

/// Whether a format-one code says a session's HMAC did not verify
/// (`TPM_RC_BAD_AUTH`, `TPM_RC_AUTH_FAIL` about a session).
pub(crate) fn is_session_auth_failure(rc: u32) -> bool {
    matches!(format_one_code(rc), Some(0x22 | 0x0e)) && rc & 0x800 != 0
}

/// `TPM_RC_HANDLE` (format one, code 0x0b).
pub(crate) const HANDLE: u32 = 0x0b;

/// A response code as a person reads it: `TPM_RC_INTEGRITY (parameter 1, 0x9f)`.
pub(crate) fn describe(rc: u32) -> String {
    if rc & 0xffff_f000 != 0 {
        return format!("response code {rc:#x} (not from a TPM: layer {})", rc >> 16);
    }
    if is_format_one(rc) {
        let code = rc & 0x3f;
        let name = FORMAT_ONE
            .iter()
            .find(|(c, _)| *c == code)
            .map_or("an unknown TPM error", |(_, n)| n);
        let n = (rc >> 8) & 0xf;
        let which = if rc & 0x40 != 0 {
            format!("parameter {n}")
        } else if rc & 0x800 != 0 {
            format!("session {}", n & 0x7)
        } else {
            format!("handle {}", n & 0x7)
        };
        if n == 0 {
            return format!("{name} ({rc:#x})");
        }
        return format!("{name} ({which}, {rc:#x})");
    }
    let name = match rc {
        0x910..=0x916 => format!("TPM_RC_REFERENCE_H{}", rc - 0x910),
        0x918..=0x91e => format!("TPM_RC_REFERENCE_S{}", rc - 0x918),
        _ => FORMAT_ZERO.iter().find(|(c, _)| *c == rc).map_or_else(
            || "an unknown TPM response".to_owned(),
            |(_, n)| (*n).to_owned(),
        ),
    };
    format!("{name} ({rc:#x})")
}

/// Why `rc` means the conversation with the TPM broke (and reconnecting may mend
/// it), or `None` for an ordinary command failure.
pub(crate) fn fault(rc: u32) -> Option<&'static str> {
    if is_handle_error(rc, HANDLE) {
        return Some("the TPM no longer knows an object this connection loaded (it restarted?)");
    }
    match rc {
        0x910..=0x916 | 0x918..=0x91e => {
            Some("the TPM no longer knows an object this connection loaded (it restarted?)")
        }
        0x100 | 0x130 => Some("the TPM was reset"),
        _ => None,
    }
}

/// Whether the TPM asks to send the command again (busy, self-testing, yielded).
pub(crate) fn is_retry(rc: u32) -> bool {
    matches!(rc, 0x908 | 0x90a | 0x922)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named_with_what_they_are_about() {
        assert_eq!(describe(0x9f), "TPM_RC_INTEGRITY (0x9f)");
        assert_eq!(describe(0x1c4), "TPM_RC_VALUE (parameter 1, 0x1c4)");
        assert_eq!(describe(0x18b), "TPM_RC_HANDLE (handle 1, 0x18b)");
        assert_eq!(describe(0x98e), "TPM_RC_AUTH_FAIL (session 1, 0x98e)");
        assert_eq!(describe(0x100), "TPM_RC_INITIALIZE (0x100)");
        assert_eq!(describe(0x911), "TPM_RC_REFERENCE_H1 (0x911)");
        assert!(describe(0x1bf).contains("unknown"));
        assert!(describe(0x97f).contains("unknown"));
        assert!(describe(0xa000a).contains("not from a TPM"));
    }

    #[test]
    fn restarts_are_told_from_failures() {
        assert!(fault(0x18b).is_some(), "handle 1 unknown");
        assert!(fault(0x910).is_some(), "handle 0 not loaded");
        assert!(fault(0x100).is_some(), "initialize");
        assert!(fault(0x9f).is_none(), "integrity");
        assert!(fault(0x1cb).is_none(), "handle error of a parameter");
        assert!(fault(0x101).is_none(), "failure");
        assert!(is_retry(0x922) && !is_retry(0x921));
        // BAD_AUTH and AUTH_FAIL about session 1; not about a parameter.
        assert!(is_session_auth_failure(0x9a2) && is_session_auth_failure(0x98e));
        assert!(!is_session_auth_failure(0x1a2) && !is_session_auth_failure(0x9a1));
    }
}

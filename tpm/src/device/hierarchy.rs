//! The owner and endorsement hierarchy passwords, for TPMs whose owner set them
//! (`tpm2_changeauth -c owner`, `-c endorsement`). The agent uses the owner
//! hierarchy for its SRK (TPM2_CreatePrimary) and for NV reads (EK and DevID
//! certificates), the endorsement hierarchy for the EK (TPM2_CreatePrimary) and for
//! the PolicySecret that authorises the EK in TPM2_ActivateCredential.
//!
//! The TPM does not count wrong hierarchy passwords towards its dictionary-attack
//! lockout (only the lockout hierarchy's is), but a wrong password is still never
//! tried twice: the operation fails with [`DeviceError::HierarchyAuth`] and says
//! which setting to check.

use std::fmt;

use zeroize::Zeroizing;

use super::DeviceError;

/// A TPM hierarchy whose password the agent may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hierarchy {
    /// TPM_RH_OWNER (storage): the SRK, NV indices defined by the owner.
    Owner,
    /// TPM_RH_ENDORSEMENT: the EK.
    Endorsement,
}

impl Hierarchy {
    /// The permanent handle.
    pub fn handle(self) -> u32 {
        match self {
            Hierarchy::Owner => 0x4000_0001,
            Hierarchy::Endorsement => 0x4000_000b,
        }
    }

    /// The name used in messages and settings (`owner`, `endorsement`).
    pub fn as_str(self) -> &'static str {
        match self {
            Hierarchy::Owner => "owner",
            Hierarchy::Endorsement => "endorsement",
        }
    }
}

impl fmt::Display for Hierarchy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The hierarchy passwords to authorise with; empty (the TPM's default) when not set.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HierarchyAuth {
    /// The owner hierarchy's password.
    pub owner: Option<Zeroizing<Vec<u8>>>,
    /// The endorsement hierarchy's password.
    pub endorsement: Option<Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for HierarchyAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HierarchyAuth")
            .field("owner", &self.owner.as_ref().map(|_| "set"))
            .field("endorsement", &self.endorsement.as_ref().map(|_| "set"))
            .finish()
    }
}

impl HierarchyAuth {
    /// The password of `hierarchy` as the TPM compares it: empty when not set, and
    /// without trailing zero octets (TPM 2.0 Part 1 removes them before use).
    pub fn value(&self, hierarchy: Hierarchy) -> &[u8] {
        let v = match hierarchy {
            Hierarchy::Owner => self.owner.as_deref(),
            Hierarchy::Endorsement => self.endorsement.as_deref(),
        };
        let v = v.map_or(&[][..], Vec::as_slice);
        let keep = v.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        &v[..keep]
    }

    /// The password for a permanent handle, if it is a hierarchy's.
    pub fn for_handle(&self, handle: u32) -> Option<&[u8]> {
        [Hierarchy::Owner, Hierarchy::Endorsement]
            .into_iter()
            .find(|h| h.handle() == handle)
            .map(|h| self.value(h))
    }

    /// Whether `hierarchy` has a password configured.
    pub fn is_set(&self, hierarchy: Hierarchy) -> bool {
        !self.value(hierarchy).is_empty()
    }

    /// The TPM refused `hierarchy`'s authorization in `command`: the error that
    /// names the hierarchy and what to check.
    pub fn refused(&self, hierarchy: Hierarchy, command: &'static str) -> DeviceError {
        DeviceError::HierarchyAuth {
            hierarchy,
            command,
            configured: self.is_set(hierarchy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_lose_trailing_zeros_and_debug_hides_them() {
        let auth = HierarchyAuth {
            owner: Some(Zeroizing::new(b"s3cret\0\0".to_vec())),
            endorsement: None,
        };
        assert_eq!(auth.value(Hierarchy::Owner), b"s3cret");
        assert_eq!(auth.value(Hierarchy::Endorsement), b"");
        assert_eq!(auth.for_handle(0x4000_0001), Some(&b"s3cret"[..]));
        assert_eq!(auth.for_handle(0x4000_000b), Some(&b""[..]));
        assert_eq!(auth.for_handle(0x8100_0001), None);
        assert!(!format!("{auth:?}").contains("s3cret"));
        let e = auth.refused(Hierarchy::Endorsement, "TPM2_CreatePrimary (EK)");
        assert!(e.to_string().contains("endorsement hierarchy"), "{e}");
    }
}

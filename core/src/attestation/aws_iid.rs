//! `aws_iid`: the agent sends the instance identity document as the metadata service
//! served it, byte for byte, with its signatures, in SPIRE's JSON shape.

use serde::{Deserialize, Serialize};

/// The name both halves use.
pub const NAME: &str = "aws_iid";

/// The agent's evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// `/latest/dynamic/instance-identity/document`, unmodified (the signatures cover
    /// these exact bytes).
    pub document: String,
    /// `/latest/dynamic/instance-identity/signature` (base64, RSA over SHA-256 with
    /// the region's older key). Carried for compatibility; not what is verified.
    #[serde(default)]
    pub signature: String,
    /// `/latest/dynamic/instance-identity/rsa2048`: base64 PKCS #7 SignedData that
    /// embeds the document, signed with the region's RSA-2048 key.
    #[serde(default)]
    pub rsa2048: String,
}

//! The evidence node attestors exchange, in one place for both halves: what the agent
//! sends for `aws_iid`, `azure_msi` and `x509pop`, and for `x509pop` the challenge,
//! the answer and exactly which bytes the node key signs. (`gcp_iit` sends the
//! identity token as it is; the TPM attestors' formats live in `tessera-tpm`.)

pub mod aws_iid;
pub mod azure_msi;
pub mod gcp_iit;
pub mod x509pop;

/// Bytes as standard base64 in JSON.
pub mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
    }

    /// A list of byte strings, each as base64.
    pub mod list {
        use super::*;
        use serde::ser::SerializeSeq;

        pub fn serialize<S: Serializer>(items: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(items.len()))?;
            for i in items {
                seq.serialize_element(&STANDARD.encode(i))?;
            }
            seq.end()
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
            let texts = Vec::<String>::deserialize(d)?;
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    STANDARD.decode(t.as_bytes()).map_err(|e| {
                        serde::de::Error::custom(format!("item {i} is not base64: {e}"))
                    })
                })
                .collect()
        }
    }
}

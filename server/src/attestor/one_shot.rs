//! The server side of the attestors that need no challenge (`aws_iid`, `gcp_iit`,
//! `azure_msi`): the agent's first message is all the evidence, checked once by a
//! [`Check`]; a session that is sent anything more refuses it.

use std::sync::Arc;

use async_trait::async_trait;

use super::{AttestError, Attested, NodeAttestor, Session, Step};

/// The check of one kind of evidence.
#[async_trait]
pub trait Check: Send + Sync + std::fmt::Debug + 'static {
    /// The name agents use.
    const NAME: &'static str;
    /// Checks the agent's payload.
    async fn check(&self, payload: Vec<u8>) -> Result<Attested, AttestError>;
}

/// A node attestor made of a [`Check`].
#[derive(Debug)]
pub struct OneShot<C> {
    check: Arc<C>,
}

impl<C: Check> OneShot<C> {
    pub fn new(check: C) -> Self {
        Self {
            check: Arc::new(check),
        }
    }

    /// The check itself (for tests and start-up).
    pub fn check(&self) -> &C {
        &self.check
    }
}

impl<C: Check> NodeAttestor for OneShot<C> {
    fn name(&self) -> &'static str {
        C::NAME
    }

    fn session(&self) -> Box<dyn Session> {
        Box::new(OneShotSession {
            check: Some(self.check.clone()),
        })
    }
}

struct OneShotSession<C> {
    check: Option<Arc<C>>,
}

#[async_trait]
impl<C: Check> Session for OneShotSession<C> {
    async fn step(&mut self, input: Vec<u8>) -> Result<Step, AttestError> {
        let check = self.check.take().ok_or_else(|| {
            AttestError::Malformed(format!("{} attestation has no challenge", C::NAME))
        })?;
        check.check(input).await.map(Step::Attested)
    }
}

/// A selector of `kind`, or the reason it cannot be one.
pub(crate) fn selector(kind: &str, value: String) -> Result<tessera_core::Selector, AttestError> {
    tessera_core::Selector::new(kind, &value)
        .map_err(|e| AttestError::Refused(format!("{kind}: unusable selector: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Echo;

    #[async_trait]
    impl Check for Echo {
        const NAME: &'static str = "echo";
        async fn check(&self, payload: Vec<u8>) -> Result<Attested, AttestError> {
            let p =
                String::from_utf8(payload).map_err(|_| AttestError::Malformed("utf8".into()))?;
            Ok(Attested {
                agent_path: format!("echo/{p}"),
                selectors: vec![selector("echo", p)?],
                can_reattest: false,
                tpm: None,
            })
        }
    }

    #[tokio::test]
    async fn the_payload_is_checked_once() {
        let a = OneShot::new(Echo);
        assert_eq!(a.name(), "echo");
        let mut s = a.session();
        let Step::Attested(done) = s.step(b"n1".to_vec()).await.unwrap() else {
            panic!("a challenge")
        };
        assert_eq!(done.agent_path, "echo/n1");
        let e = s.step(b"n1".to_vec()).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed attestation data: echo attestation has no challenge"
        );
        let e = a.session().step(vec![0xff]).await.unwrap_err();
        assert!(matches!(e, AttestError::Malformed(_)));
    }
}

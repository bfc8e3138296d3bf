//! The agent's side of the agent API (`tessera.agent.v1.Node`, see
//! `proto/proto/agent.proto`): what an agent asks of its server.
//!
//! [`ServerApi`] is the seam: one method per call, answered over gRPC by
//! [`GrpcServer`] and by a fake in the agent manager's unit tests. The exchanges
//! built on those calls are functions over it, shared by the agent and the
//! benchmark's simulated agents: [`attest`] (the attestation stream) and
//! [`sync::sync`] (the sync rounds).

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use tessera_core::SpiffeId;
use tessera_core::tls::{SharedBundle, SharedIdentity};
use tessera_proto::agent as pb;
use tessera_proto::agent::node_client::NodeClient;
use tessera_proto::agent::{attest_request, attest_response};
use tonic::Code;
use tonic::transport::Channel;

use crate::attestor::NodeAttestor;
use crate::client::{Failover, ServerConnection, Trust, channel, node_client, tls_connector};

pub mod sync;

/// Why a call to the server failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The server answered no: the agent is not (or no longer) allowed, or the request
    /// is wrong. Trying again unchanged does not help.
    #[error("server refused: {0}")]
    Rejected(String),
    /// The server could not be reached, or failed (its HSM away, overloaded).
    #[error("server unreachable or failing: {0}")]
    Unavailable(String),
    /// The attestation exchange broke down (the node attestor could not produce or
    /// answer evidence, or the server's messages made no sense).
    #[error("attestation failed: {0}")]
    Attestation(String),
    /// The node attestor cannot get its evidence yet (a cloud's metadata service is
    /// down); the server was not asked.
    #[error("the node attestor cannot get its evidence yet: {0}")]
    EvidenceUnavailable(String),
}

impl ServerError {
    /// Whether trying again later can work.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ServerError::Unavailable(_) | ServerError::EvidenceUnavailable(_)
        )
    }
}

/// How a node attestor's failure reads to the agent.
pub(crate) fn from_attestor(e: crate::attestor::AttestError) -> ServerError {
    match e {
        crate::attestor::AttestError::Unavailable(m) => ServerError::EvidenceUnavailable(m),
        other => ServerError::Attestation(other.to_string()),
    }
}

/// How a gRPC status reads to the agent: a server's refusal is [`ServerError::Rejected`],
/// everything else (unreachable, deadline, internal) [`ServerError::Unavailable`]. A
/// status the client made itself (a broken connection, a timeout) is never a refusal,
/// whatever its code: only a server can say that the agent is not allowed, and only
/// that leads the agent to attest again.
pub fn from_status(s: tonic::Status) -> ServerError {
    if crate::client::is_local(&s) {
        return ServerError::Unavailable(format!("{} ({:?})", s.message(), s.code()));
    }
    match s.code() {
        Code::PermissionDenied | Code::Unauthenticated => {
            ServerError::Rejected(s.message().to_owned())
        }
        Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound => {
            ServerError::Rejected(format!("{} ({:?})", s.message(), s.code()))
        }
        _ => ServerError::Unavailable(format!("{} ({:?})", s.message(), s.code())),
    }
}

/// The calls an agent makes to its server.
#[async_trait]
pub trait ServerApi: Send + Sync + std::fmt::Debug {
    /// Node attestation over a fresh connection trusted as `trust`, without a client
    /// SVID: `attestor`'s evidence and `csr` for the agent key, then its answers to
    /// the server's challenges. The result is the server's word, not yet checked.
    async fn attest(
        &self,
        trust: Trust,
        attestor: &dyn NodeAttestor,
        csr: Vec<u8>,
    ) -> Result<pb::AttestResult, ServerError>;

    /// One sync round (see [`sync::sync`] for the rounds).
    async fn sync_entries(&self, req: pb::SyncRequest) -> Result<pb::SyncResponse, ServerError>;

    /// X509-SVIDs for a batch of (entry, CSR); one result per request the server
    /// looked at, each with its own status.
    async fn batch_new_x509_svid(
        &self,
        requests: Vec<pb::SvidRequest>,
    ) -> Result<Vec<pb::SvidResult>, ServerError>;

    /// A new agent SVID for the key in `csr`: the chain, leaf first.
    async fn renew_agent(&self, csr: Vec<u8>) -> Result<Vec<Vec<u8>>, ServerError>;

    /// [`ServerApi::renew_agent`] with the request's other fields (the TPM key
    /// proof); servers that cannot carry them send the CSR alone.
    async fn renew_agent_with(
        &self,
        req: pb::RenewAgentRequest,
    ) -> Result<Vec<Vec<u8>>, ServerError> {
        self.renew_agent(req.csr).await
    }

    /// A JWT-SVID for an entry and audience.
    async fn new_jwt_svid(
        &self,
        entry_id: String,
        audience: Vec<String>,
    ) -> Result<pb::NewJwtSvidResponse, ServerError>;

    /// The agent's SVID changed: later calls go over a new connection that presents
    /// it (a TLS connection keeps presenting the SVID of its handshake, and the server
    /// accepts only the current and the previous one).
    fn reconnect(&self);
}

/// Attestation over `client`: the stream of [`ServerApi::attest`].
pub async fn attest(
    client: &mut NodeClient<Channel>,
    attestor: &dyn NodeAttestor,
    csr: Vec<u8>,
) -> Result<pb::AttestResult, ServerError> {
    let mut session = attestor.session();
    let payload = session.payload().await.map_err(from_attestor)?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::AttestRequest {
        step: Some(attest_request::Step::Params(pb::AttestationParams {
            attestor: attestor.name().to_owned(),
            payload,
            csr,
        })),
    })
    .await
    .map_err(|_| ServerError::Attestation("attestation channel closed".into()))?;
    let mut inbound = client
        .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(from_status)?
        .into_inner();
    loop {
        let msg = inbound
            .message()
            .await
            .map_err(from_status)?
            .ok_or_else(|| {
                ServerError::Attestation("the server closed the stream without a result".into())
            })?;
        match msg.step {
            Some(attest_response::Step::Challenge(c)) => {
                let answer = session.answer(c).await.map_err(from_attestor)?;
                tx.send(pb::AttestRequest {
                    step: Some(attest_request::Step::ChallengeResponse(answer)),
                })
                .await
                .map_err(|_| ServerError::Attestation("the server closed the stream".into()))?;
            }
            Some(attest_response::Step::Result(r)) => return Ok(r),
            None => {
                return Err(ServerError::Attestation(
                    "empty message from the server".into(),
                ));
            }
        }
    }
}

/// [`ServerApi`] over gRPC: the agent's addresses tried in order, the server checked
/// against the agent's bundle, the agent's SVID presented once it has one, and a
/// return to the preferred server after falling over to another
/// ([`ServerConnection`]).
#[derive(Debug)]
pub struct GrpcServer {
    server_id: SpiffeId,
    conn: ServerConnection,
}

impl GrpcServer {
    /// A connection (made on the first call) to the first reachable of `servers`,
    /// trusted as `server_id` under `bundle`, presenting `identity` once it is set.
    pub fn new(
        servers: Vec<String>,
        server_id: SpiffeId,
        bundle: Arc<SharedBundle>,
        identity: Arc<SharedIdentity>,
    ) -> Self {
        let tls = tls_connector(server_id.clone(), Trust::Bundle(bundle), Some(identity));
        Self {
            conn: ServerConnection::new(servers, tls, Failover::default()),
            server_id,
        }
    }

    /// The same, with `failover`'s timeouts and age limits (the agent's follow its
    /// sync interval: [`Failover::for_interval`]).
    pub fn with_failover(self, failover: Failover) -> Self {
        Self {
            conn: self.conn.with_failover(failover),
            server_id: self.server_id,
        }
    }

    /// A client on the current connection.
    pub fn client(&self) -> NodeClient<Channel> {
        node_client(self.conn.lease().channel)
    }

    /// The addresses tried, in order.
    pub fn servers(&self) -> &[String] {
        self.conn.servers()
    }

    /// The connection to the servers.
    pub fn connection(&self) -> &ServerConnection {
        &self.conn
    }

    /// One call over the current connection; a failure without an answer from the
    /// server makes the next call dial again.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, ServerError>
    where
        F: FnOnce(NodeClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let lease = self.conn.lease();
        match call(node_client(lease.channel.clone())).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => {
                self.conn.call_failed(&lease, &s);
                Err(from_status(s))
            }
        }
    }
}

#[async_trait]
impl ServerApi for GrpcServer {
    async fn attest(
        &self,
        trust: Trust,
        attestor: &dyn NodeAttestor,
        csr: Vec<u8>,
    ) -> Result<pb::AttestResult, ServerError> {
        let ch = channel(
            self.conn.servers().to_vec(),
            self.server_id.clone(),
            trust,
            None,
        );
        attest(&mut node_client(ch), attestor, csr).await
    }

    async fn sync_entries(&self, req: pb::SyncRequest) -> Result<pb::SyncResponse, ServerError> {
        self.call(|mut c| async move { c.sync_entries(req).await })
            .await
    }

    async fn batch_new_x509_svid(
        &self,
        requests: Vec<pb::SvidRequest>,
    ) -> Result<Vec<pb::SvidResult>, ServerError> {
        let req = pb::BatchNewX509SvidRequest { requests };
        Ok(self
            .call(|mut c| async move { c.batch_new_x509_svid(req).await })
            .await?
            .results)
    }

    async fn renew_agent(&self, csr: Vec<u8>) -> Result<Vec<Vec<u8>>, ServerError> {
        self.renew_agent_with(pb::RenewAgentRequest {
            csr,
            key_certify: None,
            pcr_quote: None,
        })
        .await
    }

    async fn renew_agent_with(
        &self,
        req: pb::RenewAgentRequest,
    ) -> Result<Vec<Vec<u8>>, ServerError> {
        Ok(self
            .call(|mut c| async move { c.renew_agent(req).await })
            .await?
            .svid_chain)
    }

    async fn new_jwt_svid(
        &self,
        entry_id: String,
        audience: Vec<String>,
    ) -> Result<pb::NewJwtSvidResponse, ServerError> {
        let req = pb::NewJwtSvidRequest { entry_id, audience };
        self.call(|mut c| async move { c.new_jwt_svid(req).await })
            .await
    }

    fn reconnect(&self) {
        self.conn.reconnect();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn only_a_server_can_refuse() {
        // A server's refusals.
        for s in [
            tonic::Status::permission_denied("banned"),
            tonic::Status::unauthenticated("unknown agent"),
            tonic::Status::not_found("no such entry"),
        ] {
            assert!(matches!(from_status(s), ServerError::Rejected(_)));
        }
        assert!(from_status(tonic::Status::unavailable("HSM away")).is_transient());
        // The same codes made by the client from a transport error (an HTTP/2 error
        // code can read as PermissionDenied) are not a refusal: no re-attestation
        // because a connection broke.
        let mut local = tonic::Status::permission_denied("h2 protocol error");
        local.set_source(Arc::new(std::io::Error::other("connection reset")));
        let e = from_status(local);
        assert!(e.is_transient(), "{e}");
        let io = tonic::Status::from_error(Box::new(std::io::Error::other("broken pipe")));
        assert!(crate::client::is_local(&io));
        assert!(from_status(io).is_transient());
    }
}

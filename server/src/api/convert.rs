//! The server's side of wire conversions: the shared conversions of
//! `tessera_proto::convert`, with their errors as gRPC `InvalidArgument`.

use tessera_core::{Bundle, RegistrationEntry};
use tessera_proto::types as pb;
use tonic::Status;

pub use tessera_proto::convert::{bundle_to_proto, entry_to_proto};

/// Parses an entry from the wire.
pub fn entry_from_proto(p: pb::Entry) -> Result<RegistrationEntry, Status> {
    tessera_proto::convert::entry_from_proto(p).map_err(Status::invalid_argument)
}

/// Parses a bundle from the wire.
pub fn bundle_from_proto(p: pb::Bundle) -> Result<Bundle, Status> {
    tessera_proto::convert::bundle_from_proto(p).map_err(Status::invalid_argument)
}

/// A per-item status in batch responses.
pub fn status_of(code: tonic::Code, message: impl Into<String>) -> pb::Status {
    pb::Status {
        code: code as i32,
        message: message.into(),
    }
}

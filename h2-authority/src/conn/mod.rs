//! The adapter on a socket: [`AuthorityFix`] runs the client's bytes through the
//! rewriting state machine as the server reads them, passes the server's
//! writes straight through, and closes a connection whose header block is not
//! complete within [`HEADER_BLOCK_TIMEOUT`].

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::HEADER_BLOCK_TIMEOUT;
use crate::rewrite::{Inbound, Want};

/// Wraps a freshly accepted Workload API connection so that gRPC clients that
/// send an unusable `:authority` (grpcio, grpc-java) are served; see the crate
/// documentation.
pub fn fix_authority<S>(io: S) -> AuthorityFix<S> {
    AuthorityFix {
        io,
        rx: Inbound::new(),
        deadline: None,
        deadline_block: 0,
    }
}

/// A connection whose client-to-server header blocks carry `:authority:
/// localhost`; everything else passes through. Built by [`fix_authority`].
pub struct AuthorityFix<S> {
    io: S,
    rx: Inbound,
    /// When the header block being collected must be complete.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Which block (`Inbound::blocks_started`) the deadline is for.
    deadline_block: u64,
}

impl<S> AuthorityFix<S> {
    /// The wrapped connection, e.g. to read the peer's credentials.
    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

impl<S: fmt::Debug> fmt::Debug for AuthorityFix<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorityFix")
            .field("io", &self.io)
            .field("phase", &self.rx.phase())
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = dst.filled().len();
        loop {
            let want = this.rx.drain_into(dst);
            if !this.rx.in_block() || this.deadline_block != this.rx.blocks_started() {
                this.deadline = None;
            }
            // Hand over what is ready before waiting on the socket again; a
            // zero-length success would read as end of stream.
            if dst.filled().len() > start || this.rx.at_eof() {
                return Poll::Ready(Ok(()));
            }
            match want {
                Want::Full => return Poll::Ready(Ok(())),
                Want::Input => {
                    let mut rb = ReadBuf::new(this.rx.input_space());
                    match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                        Poll::Ready(r) => r?,
                        // Waiting in the middle of a header block: only so long.
                        Poll::Pending if this.rx.in_block() => {
                            this.deadline_block = this.rx.blocks_started();
                            let deadline = this.deadline.get_or_insert_with(|| {
                                Box::pin(tokio::time::sleep(HEADER_BLOCK_TIMEOUT))
                            });
                            ready!(deadline.as_mut().poll(cx));
                            tracing::debug!(
                                "workload API connection: header block not completed within {HEADER_BLOCK_TIMEOUT:?}; closing it"
                            );
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!(
                                    "header block not completed within {HEADER_BLOCK_TIMEOUT:?}"
                                ),
                            )));
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                    let n = rb.filled().len();
                    this.rx.on_input(n);
                }
                Want::Direct(limit) => {
                    // Zeroing the unfilled part first is the price of no
                    // unsafe code: a memset, cheaper than the copy it saves.
                    let n = limit.min(dst.remaining());
                    let mut rb = ReadBuf::new(dst.initialize_unfilled_to(n));
                    ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
                    let n = rb.filled().len();
                    dst.advance(n);
                    this.rx.on_direct(n);
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;

//! Asking a cloud's instance metadata service, for the cloud node attestors: one
//! request at a time with a deadline, and what went wrong sorted for the agent's
//! retry: a service that cannot be reached, times out or answers 5xx/429 is
//! [`AttestError::Unavailable`] (the agent tries again with backoff); any other
//! answer (no identity, a refused request) is [`AttestError::Failed`], which needs a
//! person.

use std::time::Duration;

use tessera_process::http::{self, HttpError, Request, Response};

use super::AttestError;

/// The deadline of one request when the configuration sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest answer accepted (documents and tokens are a few KiB).
const MAX_BODY: usize = 64 * 1024;

/// A metadata service reached by plain HTTP (it sits on a link-local address).
#[derive(Debug, Clone)]
pub struct Service {
    /// The attestor, for messages.
    pub name: &'static str,
    opts: http::Options,
}

impl Service {
    pub fn new(name: &'static str, timeout: Duration) -> Self {
        Self {
            name,
            opts: http::Options {
                timeout,
                max_body: MAX_BODY,
                tls: None,
            },
        }
    }

    /// Sends `req`; any answer, whatever its status, or why there was none.
    pub async fn send(&self, req: Request) -> Result<Response, AttestError> {
        let url = req.url.clone();
        http::send(req, &self.opts).await.map_err(|e| match e {
            e @ (HttpError::Connect { .. }
            | HttpError::Timeout { .. }
            | HttpError::Protocol { .. }) => AttestError::Unavailable(format!(
                "{}: the instance metadata service cannot be reached ({e})",
                self.name
            )),
            other => AttestError::Failed(format!("{}: {url}: {other}", self.name)),
        })
    }

    /// Sends `req` and returns the body of a 200 answer.
    pub async fn fetch(&self, req: Request) -> Result<Vec<u8>, AttestError> {
        let url = req.url.clone();
        let r = self.send(req).await?;
        self.ok(&url, r)
    }

    /// The body of a 200 answer, or the error the status means.
    pub fn ok(&self, url: &str, r: Response) -> Result<Vec<u8>, AttestError> {
        if r.status == 200 {
            return Ok(r.body);
        }
        let m = format!(
            "{}: the instance metadata service answered {} to {url}: {}",
            self.name,
            r.status,
            r.body_excerpt()
        );
        if r.status >= 500 || r.status == 429 {
            Err(AttestError::Unavailable(m))
        } else {
            Err(AttestError::Failed(m))
        }
    }
}

/// `value` encoded for a URL query (RFC 3986 unreserved characters kept).
pub fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_queries() {
        assert_eq!(
            query_escape("https://management.azure.com/"),
            "https%3A%2F%2Fmanagement.azure.com%2F"
        );
        assert_eq!(query_escape("a b&c=d~e"), "a%20b%26c%3Dd~e");
    }

    #[test]
    fn statuses_sort_into_retry_or_not() {
        let s = Service::new("aws_iid", DEFAULT_TIMEOUT);
        let r = |status| Response {
            status,
            headers: Default::default(),
            body: b"nope".to_vec(),
        };
        assert_eq!(s.ok("u", r(200)).unwrap(), b"nope");
        for status in [500, 503, 429] {
            assert!(matches!(
                s.ok("u", r(status)),
                Err(AttestError::Unavailable(_))
            ));
        }
        for status in [400, 401, 403, 404] {
            let e = s.ok("u", r(status)).unwrap_err();
            assert!(matches!(e, AttestError::Failed(_)), "{status}");
            assert!(
                e.to_string()
                    .contains(&format!("answered {status} to u: nope")),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn an_absent_service_is_unavailable() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/latest", l.local_addr().unwrap());
        drop(l);
        let e = Service::new("gcp_iit", DEFAULT_TIMEOUT)
            .fetch(Request::get(&url))
            .await
            .unwrap_err();
        assert!(matches!(e, AttestError::Unavailable(_)), "{e}");
        assert!(
            e.to_string()
                .starts_with("gcp_iit: the instance metadata service cannot be reached"),
            "{e}"
        );
    }
}

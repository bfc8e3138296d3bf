//! Keeping another trust domain's bundle: one task per relationship fetches the
//! bundle from the trust domain's endpoint, checks who served it (`https_spiffe`:
//! an X509-SVID with the configured ID, chained to the bundle of that ID's trust
//! domain as stored; `https_web`: a certificate for the URL's host under the
//! configured or system roots), and stores it as a federated bundle. It fetches
//! again after the bundle's `spiffe_refresh_hint` (five minutes when it gives none,
//! at least 10 s and at most a day), and after a failure sooner, backing off from
//! 5 s. The stored bundle is never dropped because a fetch failed.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::tls::SharedBundle;
use tessera_core::{Bundle, TrustDomain};
use tessera_process::http::{self, Request};
use tokio::sync::watch;

use super::{Profile, RelationshipConfig};
use crate::datastore::Datastore;

/// The refresh interval when a bundle gives no hint (the standard's default).
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Bounds on the interval a bundle's hint can ask for.
const MIN_REFRESH: Duration = Duration::from_secs(10);
const MAX_REFRESH: Duration = Duration::from_secs(86_400);
/// The first retry after a failure; it doubles up to the refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The largest bundle accepted.
const MAX_BUNDLE: usize = 1 << 20;

/// When to fetch again after a bundle with `hint` seconds (0: none) arrived.
pub fn next_refresh(hint: u64) -> Duration {
    if hint == 0 {
        return DEFAULT_REFRESH;
    }
    Duration::from_secs(hint).clamp(MIN_REFRESH, MAX_REFRESH)
}

/// When to try again after `failures` failures in a row (1 for the first), given
/// the refresh interval of the last good bundle.
pub fn next_retry(failures: u32, refresh: Duration) -> Duration {
    let doubled = FIRST_RETRY.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(refresh.max(FIRST_RETRY))
}

/// Fetches the bundle of `rel` once and stores it; returns what was stored, or why
/// nothing was.
pub async fn refresh(ds: &dyn Datastore, rel: &RelationshipConfig) -> Result<Bundle, String> {
    let tls = match (rel.bundle_endpoint_profile, &rel.endpoint_spiffe_id) {
        (Profile::HttpsSpiffe, Some(id)) => {
            let td: &TrustDomain = id.trust_domain();
            let anchor = ds
                .get_bundle(td)
                .await
                .map_err(|e| format!("cannot read the bundle of {td}: {e}"))?
                .ok_or_else(|| {
                    format!(
                        "no bundle of {td} is stored to check {id} with: set one first \
                         (tessera-server bundle set, from the other side's bundle show)"
                    )
                })?;
            let mut c =
                tessera_core::tls::client_config(SharedBundle::new(anchor), id.clone(), None);
            // The endpoint speaks HTTP/1.1 to this client.
            c.alpn_protocols.clear();
            Arc::new(c)
        }
        _ => crate::https::tls_roots(
            &format!("[[federation.federates_with]] {}", rel.trust_domain),
            "ca_bundle",
            rel.ca_bundle.as_deref(),
        )?,
    };
    let opts = http::Options {
        timeout: Duration::from_secs(10),
        max_body: MAX_BUNDLE,
        tls: Some(tls),
    };
    let got = http::send(Request::get(&rel.bundle_endpoint_url), &opts)
        .await
        .map_err(|e| e.to_string())?;
    if got.status != 200 {
        return Err(format!(
            "{} answered {}: {}",
            rel.bundle_endpoint_url,
            got.status,
            got.body_excerpt()
        ));
    }
    let bundle = Bundle::from_jwks(rel.trust_domain.clone(), &got.body)
        .map_err(|e| format!("{} served no usable bundle: {e}", rel.bundle_endpoint_url))?;
    super::store(ds, bundle)
        .await
        .map_err(|e| format!("cannot store the bundle of {}: {e}", rel.trust_domain))
}

/// Keeps the bundle of `rel` fresh until `shutdown` turns true.
pub fn spawn(ds: Arc<dyn Datastore>, rel: RelationshipConfig, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut interval = DEFAULT_REFRESH;
        let mut failures = 0u32;
        loop {
            let wait = match refresh(ds.as_ref(), &rel).await {
                Ok(b) => {
                    if failures > 0 {
                        tracing::info!(trust_domain = %rel.trust_domain, "federated bundle fetched again after {failures} failures");
                    }
                    failures = 0;
                    interval = next_refresh(b.refresh_hint());
                    tracing::info!(
                        trust_domain = %rel.trust_domain,
                        sequence = b.sequence(),
                        x509_authorities = b.x509_authorities().len(),
                        jwt_authorities = b.jwt_authorities().len(),
                        next = ?interval,
                        "federated bundle refreshed"
                    );
                    interval
                }
                Err(e) => {
                    failures += 1;
                    let wait = next_retry(failures, interval);
                    tracing::warn!(
                        trust_domain = %rel.trust_domain,
                        url = %rel.bundle_endpoint_url,
                        error = %e,
                        retry_in = ?wait,
                        "cannot refresh the federated bundle (the stored one stays)"
                    );
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_sets_the_interval_within_bounds() {
        assert_eq!(next_refresh(0), Duration::from_secs(300));
        assert_eq!(next_refresh(60), Duration::from_secs(60));
        assert_eq!(next_refresh(1), Duration::from_secs(10));
        assert_eq!(next_refresh(10_000_000), Duration::from_secs(86_400));
    }

    #[test]
    fn retries_back_off_up_to_the_refresh_interval() {
        let refresh = Duration::from_secs(60);
        let waits: Vec<u64> = (1..=6).map(|n| next_retry(n, refresh).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
        assert_eq!(
            next_retry(1, Duration::from_secs(1)),
            Duration::from_secs(5)
        );
        assert_eq!(
            next_retry(u32::MAX, Duration::from_secs(300)).as_secs(),
            300
        );
    }
}

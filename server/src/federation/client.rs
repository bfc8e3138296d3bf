//! Keeping another trust domain's bundle: one task per relationship fetches the
//! bundle from the trust domain's endpoint, checks who served it (`https_spiffe`:
//! an X509-SVID with the configured ID, chained to the bundle of that ID's trust
//! domain as stored; `https_web`: a certificate for the URL's host under the
//! configured or system roots), and stores it as a federated bundle. It fetches
//! again after the bundle's `spiffe_refresh_hint` (five minutes when it gives none,
//! at least 10 s and at most a day), and after a failure sooner, backing off from
//! 5 s. The stored bundle is never dropped because a fetch failed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tessera_core::tls::SharedBundle;
use tessera_core::{Bundle, TrustDomain};
use tessera_process::http::{self, Request};
use tokio::task::JoinHandle;

use super::{Profile, Relationship};
use crate::datastore::Datastore;

/// The refresh interval when a bundle gives no hint (the standard's default).
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Bounds on the interval a bundle's hint can ask for.
const MIN_REFRESH: Duration = Duration::from_secs(10);
const MAX_REFRESH: Duration = Duration::from_secs(86_400);
/// The first retry after a failure; it doubles up to the refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The largest bundle accepted (a bundle of 64 RSA-4096 authorities is under
/// 200 KiB).
const MAX_BUNDLE: usize = 256 * 1024;
/// The most X.509 authorities, and the most JWT keys, a fetched bundle may hold:
/// every agent whose entries federate gets the bundle with each sync.
const MAX_AUTHORITIES: usize = 64;

/// The `spiffe_sequence` each trust domain's endpoint served last, since this
/// process started. The stored bundle carries this server's own numbering (it goes
/// up with every change, including a `bundle set`), so an endpoint's answer is
/// compared with what the endpoint itself served before.
#[derive(Debug, Default)]
pub struct Served(Mutex<HashMap<TrustDomain, u64>>);

impl Served {
    fn last(&self, td: &TrustDomain) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(td)
            .copied()
    }

    /// Forgets what `td`'s endpoint served: after an operator set its bundle, any
    /// sequence is accepted again.
    pub fn forget(&self, td: &TrustDomain) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(td);
    }

    fn record(&self, td: &TrustDomain, sequence: u64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(td.clone(), sequence);
    }
}

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
pub async fn refresh(
    ds: &dyn Datastore,
    rel: &Relationship,
    served: &Served,
) -> Result<Bundle, String> {
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
        _ => {
            let setting = format!("federation relationship {}", rel.trust_domain);
            match &rel.ca_bundle_pem {
                Some(pem) => crate::https::tls_roots_pem(&setting, "ca_bundle", pem.as_bytes())?,
                None => crate::https::tls_roots(&setting, "ca_bundle", None)?,
            }
        }
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
    let stored = ds.get_bundle(&rel.trust_domain).await.ok().flatten();
    acceptable(&bundle, stored.as_ref(), served.last(&rel.trust_domain))?;
    let sequence = bundle.sequence();
    let stored = super::store(ds, bundle)
        .await
        .map_err(|e| format!("cannot store the bundle of {}: {e}", rel.trust_domain))?;
    served.record(&rel.trust_domain, sequence);
    Ok(stored)
}

/// Whether a fetched bundle may replace `stored`. Refused, keeping the stored one:
/// a bundle without X.509 authorities (the standard lets an empty key set mean
/// "trust nothing from this trust domain", but one broken answer would then cut
/// the federation off for good, since an `https_spiffe` endpoint is checked against
/// the stored bundle; deleting the bundle or the relationship is the way to stop
/// trusting); more authorities than a bundle needs; and a `spiffe_sequence` older
/// than the one the endpoint served last (`last_served`), with other authorities
/// than the stored ones (a stale copy bringing back keys the trust domain has
/// removed).
pub fn acceptable(
    fetched: &Bundle,
    stored: Option<&Bundle>,
    last_served: Option<u64>,
) -> Result<(), String> {
    if fetched.x509_authorities().is_empty() {
        return Err("the bundle served has no X.509 authority; the stored one is kept".into());
    }
    if fetched.x509_authorities().len() > MAX_AUTHORITIES
        || fetched.jwt_authorities().len() > MAX_AUTHORITIES
    {
        return Err(format!(
            "the bundle served holds {} X.509 authorities and {} JWT keys, more than the \
             {MAX_AUTHORITIES} of each accepted",
            fetched.x509_authorities().len(),
            fetched.jwt_authorities().len()
        ));
    }
    if let (Some(stored), Some(last)) = (stored, last_served)
        && fetched.sequence() != 0
        && fetched.sequence() < last
        && !stored.same_authorities(fetched)
    {
        return Err(format!(
            "the bundle served has spiffe_sequence {}, older than the {last} it served \
             before, with other authorities: a stale copy; the stored one is kept \
             (tessera-server bundle set replaces it if the other side really started over)",
            fetched.sequence(),
        ));
    }
    Ok(())
}

/// Keeps the bundle of `rel` fresh until the task is aborted.
pub fn spawn(ds: Arc<dyn Datastore>, rel: Relationship, served: Arc<Served>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = DEFAULT_REFRESH;
        let mut failures = 0u32;
        loop {
            let wait = match refresh(ds.as_ref(), &rel, &served).await {
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
            tokio::time::sleep(wait).await;
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use super::*;

    #[test]
    fn the_hint_sets_the_interval_within_bounds() {
        assert_eq!(next_refresh(0), Duration::from_secs(300));
        assert_eq!(next_refresh(60), Duration::from_secs(60));
        assert_eq!(next_refresh(1), Duration::from_secs(10));
        assert_eq!(next_refresh(10_000_000), Duration::from_secs(86_400));
    }

    #[test]
    fn empty_oversized_and_stale_bundles_are_refused() {
        use tessera_core::TrustDomain;
        let td = TrustDomain::new("spire.test").unwrap();
        let ca = |n: u8| vec![0x30, 0x03, 0x02, 0x01, n];
        let bundle = |seq: u64, cas: Vec<Vec<u8>>| {
            let mut b = Bundle::with_x509(td.clone(), cas);
            b.set_sequence(seq);
            b
        };
        // Stored under this server's numbering (9); the endpoint last served 5.
        let stored = bundle(9, vec![ca(1)]);
        let last = Some(5);
        let ok = |b: Bundle| acceptable(&b, Some(&stored), last);
        assert_eq!(ok(bundle(6, vec![ca(2)])), Ok(()));
        assert_eq!(ok(bundle(5, vec![ca(1)])), Ok(()));
        assert_eq!(ok(bundle(0, vec![ca(2)])), Ok(()), "no sequence given");
        assert_eq!(ok(bundle(4, vec![ca(1)])), Ok(()), "the same authorities");
        assert_eq!(acceptable(&bundle(1, vec![ca(2)]), None, None), Ok(()));
        assert_eq!(
            acceptable(&bundle(1, vec![ca(2)]), Some(&stored), None),
            Ok(()),
            "nothing served yet: the stored numbering is this server's own"
        );
        let e = ok(bundle(4, vec![ca(2)])).unwrap_err();
        assert!(e.contains("older than the 5 it served before"), "{e}");
        // What the endpoint served is remembered per trust domain, until an
        // operator sets the bundle.
        let served = Served::default();
        served.record(&td, 5);
        let last = served.last(&td);
        assert!(acceptable(&bundle(4, vec![ca(2)]), Some(&stored), last).is_err());
        served.forget(&td);
        assert_eq!(served.last(&td), None);
        let last = served.last(&td);
        assert_eq!(
            acceptable(&bundle(4, vec![ca(2)]), Some(&stored), last),
            Ok(())
        );
        let e = ok(bundle(9, vec![])).unwrap_err();
        assert!(e.contains("no X.509 authority"), "{e}");
        let many = (0..=MAX_AUTHORITIES).map(|n| ca(n as u8)).collect();
        let e = ok(bundle(9, many)).unwrap_err();
        assert!(e.contains("more than the 64"), "{e}");
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

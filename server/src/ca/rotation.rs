//! Rotation as a pure function of the journal and the time: given the authorities of
//! one kind (X.509 CAs or JWT keys) and the time now, what to prune and what to do
//! next. The manager carries the plan out against the key manager and the datastore;
//! keeping the decision apart from both is what lets it be checked at any instant.
//!
//! The thresholds are counted from the moment the active authority was issued: the
//! next one is *prepared* (and published) once half of its life is over, and takes
//! over once a sixth is left, and never before it has been published for the
//! propagation time (agents sync it, federated peers refresh it: an SVID signed by an
//! authority a verifier does not know yet would be refused).
//!
//! Several servers can share a trust domain, each with its own authorities. A server
//! that has nothing able to sign while another server's authority can (it joins the
//! trust domain, or was down longer than its CA's life) does not sign with a brand-new
//! authority at once: it prepares one, and activates it after the propagation time.
//! The server alone in its trust domain, with nothing to wait for, creates one active
//! at once. Only the active authority's own lifetime is compared
//! with the time, so a clock stepped backwards delays the next step but never undoes
//! one already taken: nothing here turns an old authority back into an active one.

use crate::datastore::{CaRecord, CaStatus};

/// What rotation looks at in one authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Authority<'a> {
    pub id: &'a str,
    pub status: CaStatus,
    /// When it was issued (unix seconds).
    pub not_before: i64,
    /// When it expires (unix seconds).
    pub not_after: i64,
    /// Whether its key is at hand: a retired authority, or one whose key was not
    /// found, signs nothing.
    pub has_key: bool,
}

impl<'a> Authority<'a> {
    /// The view of a journal record whose key is (or is not) at hand.
    pub(crate) fn of(record: &'a CaRecord, has_key: bool) -> Self {
        Self {
            id: &record.id,
            status: record.status,
            not_before: record.not_before,
            not_after: record.not_after,
            has_key,
        }
    }

    fn signs(&self, status: CaStatus) -> bool {
        self.status == status && self.has_key
    }
}

/// What the plan needs beside the authorities themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Context {
    /// Unix seconds.
    pub now: i64,
    /// How long (seconds) an authority must have been published before it signs.
    pub propagation: i64,
    /// Whether another server of the trust domain has an authority of this kind that
    /// can sign (so this one may take its time).
    pub others_sign: bool,
}

/// The next step for one kind of authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing of this server's can sign, but a prepared authority can: it becomes
    /// active now (at once when no other server signs, after the propagation time
    /// otherwise).
    ActivatePrepared { prepared: String },
    /// Nothing can sign, nothing is prepared, and no other server signs: a new
    /// authority is made active now.
    CreateActive,
    /// Half of the active authority's life is over and nothing is prepared, or
    /// nothing of this server's can sign while another server's can: the next one is
    /// made and published.
    Prepare,
    /// A sixth of the active authority's life is left, and the prepared one has been
    /// published for the propagation time: it takes over, the active one becomes old
    /// (and stays published until it expires).
    Activate { old: String, new: String },
}

/// What one rotation step does for one kind of authority.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Expired authorities: they leave the bundle, their key is destroyed (everything
    /// they signed has expired with them), then their record goes.
    pub prune: Vec<String>,
    pub step: Option<Step>,
}

/// When the next authority is prepared, and when it takes over, for an active
/// authority issued at `not_before` that expires at `not_after`.
pub(crate) fn thresholds(not_before: i64, not_after: i64) -> (i64, i64) {
    let life = (not_after - not_before).max(1);
    (not_before + life / 2, not_after - life / 6)
}

/// The plan for `authorities` (one kind, this server's) in `cx`.
pub(crate) fn plan(authorities: &[Authority<'_>], cx: Context) -> Plan {
    let now = cx.now;
    let (expired, live): (Vec<&Authority<'_>>, Vec<&Authority<'_>>) =
        authorities.iter().partition(|a| a.not_after <= now);
    let active = live.iter().find(|a| a.signs(CaStatus::Active));
    let prepared = live.iter().find(|a| a.signs(CaStatus::Prepared));
    let known = |p: &Authority<'_>| now >= p.not_before.saturating_add(cx.propagation);
    let step = match (active, prepared) {
        (None, Some(p)) => (!cx.others_sign || known(p)).then(|| Step::ActivatePrepared {
            prepared: p.id.to_owned(),
        }),
        (None, None) if cx.others_sign => Some(Step::Prepare),
        (None, None) => Some(Step::CreateActive),
        (Some(a), None) => {
            let (prepare_at, _) = thresholds(a.not_before, a.not_after);
            (now >= prepare_at).then_some(Step::Prepare)
        }
        (Some(a), Some(p)) => {
            let (_, activate_at) = thresholds(a.not_before, a.not_after);
            (now >= activate_at && known(p)).then(|| Step::Activate {
                old: a.id.to_owned(),
                new: p.id.to_owned(),
            })
        }
    };
    Plan {
        prune: expired.iter().map(|a| a.id.to_owned()).collect(),
        step,
    }
}

/// When the prepared authority among `authorities` may sign, if this server waits
/// for it to be known (nothing of its own signs, or its active authority is due to
/// hand over): the moment the next rotation step should run.
pub(crate) fn waiting_until(authorities: &[Authority<'_>], cx: Context) -> Option<i64> {
    let live = || authorities.iter().filter(|a| a.not_after > cx.now);
    let prepared = live().find(|a| a.signs(CaStatus::Prepared))?;
    let known_at = prepared.not_before.saturating_add(cx.propagation);
    (known_at > cx.now).then_some(known_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000;
    /// A lifetime that divides evenly: prepare at +600, activate at +1000.
    const LIFE: i64 = 1_200;

    /// The context of a server alone in its trust domain, with no propagation wait.
    fn at(now: i64) -> Context {
        Context {
            now,
            propagation: 0,
            others_sign: false,
        }
    }

    fn auth(id: &str, status: CaStatus, not_before: i64) -> Authority<'_> {
        Authority {
            id,
            status,
            not_before,
            not_after: not_before + LIFE,
            has_key: true,
        }
    }

    #[test]
    fn thresholds_are_half_life_and_a_sixth_left() {
        assert_eq!(thresholds(T0, T0 + LIFE), (T0 + 600, T0 + 1_000));
        // A zero or negative lifetime cannot divide by zero.
        assert_eq!(thresholds(T0, T0), (T0, T0));
    }

    #[test]
    fn nothing_at_all_makes_an_active_authority() {
        assert_eq!(plan(&[], at(T0)).step, Some(Step::CreateActive));
    }

    #[test]
    fn the_next_authority_is_prepared_at_half_life() {
        let a = [auth("a", CaStatus::Active, T0)];
        assert_eq!(plan(&a, at(T0 + 599)), Plan::default());
        assert_eq!(plan(&a, at(T0 + 600)).step, Some(Step::Prepare));
        // Still due later on, if preparing failed the first time.
        assert_eq!(plan(&a, at(T0 + 1_100)).step, Some(Step::Prepare));
    }

    #[test]
    fn the_prepared_authority_takes_over_with_a_sixth_left() {
        let a = [
            auth("a", CaStatus::Active, T0),
            auth("b", CaStatus::Prepared, T0 + 600),
        ];
        assert_eq!(plan(&a, at(T0 + 600)), Plan::default());
        assert_eq!(plan(&a, at(T0 + 999)), Plan::default());
        assert_eq!(
            plan(&a, at(T0 + 1_000)).step,
            Some(Step::Activate {
                old: "a".into(),
                new: "b".into()
            })
        );
    }

    #[test]
    fn expired_authorities_are_pruned_and_ignored() {
        let a = [
            auth("a", CaStatus::Old, T0),
            auth("b", CaStatus::Active, T0 + 1_000),
        ];
        assert_eq!(plan(&a, at(T0 + LIFE - 1)).prune, Vec::<String>::new());
        let p = plan(&a, at(T0 + LIFE));
        assert_eq!(p.prune, vec!["a".to_owned()]);
        assert_eq!(p.step, None);
        // An expired active authority is no authority: a new one is made.
        let alone = [auth("a", CaStatus::Active, T0)];
        let p = plan(&alone, at(T0 + LIFE));
        assert_eq!(p.prune, vec!["a".to_owned()]);
        assert_eq!(p.step, Some(Step::CreateActive));
    }

    #[test]
    fn an_authority_without_its_key_is_replaced_by_the_prepared_one_first() {
        let mut lost = auth("a", CaStatus::Retired, T0);
        lost.has_key = false;
        let prepared = auth("b", CaStatus::Prepared, T0 + 600);
        assert_eq!(
            plan(&[lost, prepared], at(T0 + 700)).step,
            Some(Step::ActivatePrepared {
                prepared: "b".into()
            })
        );
        assert_eq!(plan(&[lost], at(T0 + 700)).step, Some(Step::CreateActive));
        // An active record whose key was not found cannot sign either.
        let mut keyless = auth("a", CaStatus::Active, T0);
        keyless.has_key = false;
        assert_eq!(plan(&[keyless], at(T0 + 1)).step, Some(Step::CreateActive));
        // Retired authorities stay until they expire, like old ones.
        assert_eq!(plan(&[lost], at(T0 + LIFE)).prune, vec!["a".to_owned()]);
    }

    #[test]
    fn a_clock_stepped_back_undoes_nothing() {
        // After the hand-over: "a" is old, "b" active since T0 + 1000.
        let after = [
            auth("a", CaStatus::Old, T0),
            auth("b", CaStatus::Active, T0 + 600),
        ];
        for back in [T0 + 999, T0 + 600, T0, T0 - 86_400] {
            assert_eq!(plan(&after, at(back)), Plan::default(), "at {back}");
        }
    }

    #[test]
    fn the_prepared_authority_signs_only_once_published_for_the_propagation_time() {
        let a = [
            auth("a", CaStatus::Active, T0),
            auth("b", CaStatus::Prepared, T0 + 900),
        ];
        let cx = |now| Context {
            now,
            propagation: 150,
            others_sign: false,
        };
        // Due by lifetime at +1000, but "b" is known only from +1050.
        assert_eq!(plan(&a, cx(T0 + 1_000)), Plan::default());
        assert_eq!(waiting_until(&a, cx(T0 + 1_000)), Some(T0 + 1_050));
        assert_eq!(
            plan(&a, cx(T0 + 1_050)).step,
            Some(Step::Activate {
                old: "a".into(),
                new: "b".into()
            })
        );
        assert_eq!(waiting_until(&a, cx(T0 + 1_050)), None);
    }

    #[test]
    fn a_server_joining_a_signing_trust_domain_prepares_and_waits() {
        let joining = |now| Context {
            now,
            propagation: 30,
            others_sign: true,
        };
        // Nothing of its own: prepared first, not active.
        assert_eq!(plan(&[], joining(T0)).step, Some(Step::Prepare));
        let p = [auth("p", CaStatus::Prepared, T0)];
        assert_eq!(plan(&p, joining(T0 + 29)), Plan::default());
        assert_eq!(waiting_until(&p, joining(T0 + 29)), Some(T0 + 30));
        assert_eq!(
            plan(&p, joining(T0 + 30)).step,
            Some(Step::ActivatePrepared {
                prepared: "p".into()
            })
        );
        // Alone in the trust domain, it cannot wait for anyone: at once.
        let alone = |now| Context {
            others_sign: false,
            ..joining(now)
        };
        assert_eq!(plan(&[], alone(T0)).step, Some(Step::CreateActive));
        assert_eq!(
            plan(&p, alone(T0 + 1)).step,
            Some(Step::ActivatePrepared {
                prepared: "p".into()
            })
        );
    }
}

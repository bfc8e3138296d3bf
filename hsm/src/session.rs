//! The connection to the token: one long-lived logged-in session, a pool of sessions
//! for the work, and recovery when the token goes away and comes back.
//!
//! - PKCS#11 sessions may not be used by two threads at once, so each operation
//!   checks one out of the pool, uses it alone and gives it back. The pool opens
//!   sessions on demand up to `sessions` and makes further callers wait.
//! - Login state is shared by all sessions of the application and ends when the
//!   last session closes, so an *anchor* session stays open for as long as the
//!   manager lives; pool sessions come and go without logging us out.
//! - When a call fails in a way that says the token is unusable (device removed,
//!   token not present, session handle invalid, CKR_GENERAL_ERROR, ...), the
//!   connection is marked broken and recovered: drop the sessions, find the token
//!   again, open a new anchor and log in. If the token cannot be found that way the
//!   module is re-initialised, which is the only way some modules (SoftHSM2) look
//!   for tokens again. The failed operation is retried once after a successful
//!   recovery; otherwise the caller gets [`HsmError::Unavailable`] and later calls
//!   retry recovery with a backoff (100 ms doubling to 5 s), so a dead token is
//!   not hammered by every request.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::session::{Session, SessionState};
use cryptoki::slot::Slot;

use crate::config::Plan;
use crate::error::HsmError;
use crate::module::{self, Module};
use crate::pin::{PinSource, RefusedPin};
use crate::token::{self, TokenSelector};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

enum Status {
    Ready,
    Broken {
        reason: String,
        next_attempt: Instant,
        backoff: Duration,
    },
}

struct Conn {
    slot: Option<Slot>,
    /// The token's name for messages.
    name: Arc<str>,
    /// Module generation the slot and anchor belong to.
    generation: u64,
    /// Bumped by every successful (re)connection; pool sessions carry the epoch
    /// they were opened in so that recovery retires them all.
    epoch: u64,
    login_required: bool,
    anchor: Option<Session>,
    status: Status,
}

struct Pooled {
    session: Session,
    generation: u64,
    epoch: u64,
}

struct Pool {
    idle: Vec<Pooled>,
    open: usize,
}

/// What an operation gets to work with: a session of its own, the module, the slot.
pub(crate) struct Op<'a> {
    pub(crate) session: &'a Session,
    pub(crate) ctx: &'a Pkcs11,
    pub(crate) slot: Slot,
    pub(crate) generation: u64,
    pub(crate) token: &'a str,
}

/// The token connection shared by a manager and every key it hands out.
pub(crate) struct Hsm {
    module: Arc<Module>,
    selector: TokenSelector,
    pin: Option<PinSource>,
    refused_pin: RefusedPin,
    max_sessions: usize,
    conn: Mutex<Conn>,
    pool: Mutex<Pool>,
    returned: Condvar,
    /// One recovery at a time; the others wait and then see its outcome.
    recovery: Mutex<()>,
}

impl fmt::Debug for Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hsm")
            .field("module", &self.module.path())
            .field("token", &self.selector.describe())
            .field("sessions", &self.max_sessions)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, HsmError> {
    m.lock().map_err(|_| HsmError::Poisoned)
}

/// Closes a session whose failure would tell us nothing useful.
fn close_quietly(session: Session) {
    if let Err(e) = session.close() {
        tracing::debug!(error = %HsmError::from(e), "closing a PKCS#11 session failed");
    }
}

/// Errors after which re-initialising the module might help.
fn worth_reinitializing(e: &HsmError) -> bool {
    !matches!(
        e,
        HsmError::WrongPin { .. }
            | HsmError::PinLocked { .. }
            | HsmError::PinExpired { .. }
            | HsmError::PinMissing { .. }
            | HsmError::Pin(_)
            | HsmError::Config(_)
            | HsmError::Poisoned
    )
}

impl Hsm {
    /// Loads the module, finds the token and logs in. Errors are reported as they
    /// are (wrong PIN, token not found, ...): at start-up the operator must fix them.
    pub(crate) fn open(plan: &Plan) -> Result<Arc<Self>, HsmError> {
        let module = module::load(&plan.module)?;
        {
            let guard = module.read()?;
            plan.token
                .check_library(guard.ctx())
                .map_err(|reason| HsmError::ModuleLoad {
                    path: plan.module.clone(),
                    reason,
                })?;
        }
        let hsm = Arc::new(Hsm {
            module,
            selector: plan.token.clone(),
            pin: plan.pin.clone(),
            refused_pin: RefusedPin::default(),
            max_sessions: plan.sessions,
            conn: Mutex::new(Conn {
                slot: None,
                name: Arc::from(plan.token.describe()),
                generation: 0,
                epoch: 0,
                login_required: false,
                anchor: None,
                status: Status::Broken {
                    reason: "not connected yet".into(),
                    next_attempt: Instant::now(),
                    backoff: Duration::ZERO,
                },
            }),
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
            recovery: Mutex::new(()),
        });
        hsm.connect()?;
        Ok(hsm)
    }

    /// The token's name for messages.
    pub(crate) fn token_name(&self) -> String {
        lock(&self.conn)
            .map(|c| c.name.to_string())
            .unwrap_or_else(|_| self.selector.describe())
    }

    pub(crate) fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    pub(crate) fn module(&self) -> &Module {
        &self.module
    }

    /// Finds the token, opens the anchor session, logs in, and retires every session
    /// of the previous connection.
    fn connect(&self) -> Result<(), HsmError> {
        let _turn = self.module.objects_turn()?;
        let guard = self.module.read()?;
        let ctx = guard.ctx();
        let generation = guard.generation();
        let found = token::find(ctx, &self.selector)?;
        let anchor = ctx.open_ro_session_no_drop(found.slot)?;
        if let Err(e) = token::login(&anchor, &found, self.pin.as_ref(), &self.refused_pin) {
            close_quietly(anchor);
            return Err(e);
        }
        let (old_anchor, old_generation) = {
            let mut c = lock(&self.conn)?;
            let old = c.anchor.replace(anchor);
            let old_generation = c.generation;
            c.slot = Some(found.slot);
            c.name = Arc::from(found.name.as_str());
            c.generation = generation;
            c.epoch += 1;
            c.login_required = found.info.login_required();
            c.status = Status::Ready;
            (old, old_generation)
        };
        // The new anchor keeps us logged in while the old one closes. Sessions of an
        // older generation died with C_Finalize: their handles may name someone
        // else's sessions now, so they are dropped without a close.
        if let Some(old) = old_anchor
            && old_generation == generation
        {
            close_quietly(old);
        }
        let stale: Vec<Pooled> = {
            let mut pool = lock(&self.pool)?;
            let stale = std::mem::take(&mut pool.idle);
            pool.open -= stale.len();
            stale
        };
        for p in stale {
            if p.generation == generation {
                close_quietly(p.session);
            }
        }
        self.returned.notify_all();
        Ok(())
    }

    /// Brings a broken connection back, at most once per backoff period unless
    /// `force` (an explicit health check) says to try now.
    fn recover(&self, force: bool) -> Result<(), HsmError> {
        let _one_at_a_time = lock(&self.recovery)?;
        let backoff = {
            let c = lock(&self.conn)?;
            match &c.status {
                Status::Ready => return Ok(()),
                Status::Broken {
                    reason,
                    next_attempt,
                    backoff,
                } => {
                    if !force && Instant::now() < *next_attempt {
                        return Err(HsmError::Unavailable {
                            token: c.name.to_string(),
                            reason: reason.clone(),
                        });
                    }
                    *backoff
                }
            }
        };
        let seen = self.module.read()?.generation();
        let result = match self.connect() {
            Err(e) if worth_reinitializing(&e) => {
                tracing::info!(error = %e, "token not usable; re-initialising the PKCS#11 module");
                self.module.reinitialize(seen).and_then(|()| self.connect())
            }
            other => other,
        };
        match &result {
            Ok(()) => tracing::info!(token = %self.token_name(), "PKCS#11 token usable again"),
            Err(e) => {
                let backoff = (backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                let mut c = lock(&self.conn)?;
                c.status = Status::Broken {
                    reason: e.to_string(),
                    next_attempt: Instant::now() + backoff,
                    backoff,
                };
                tracing::warn!(token = %c.name, error = %e, retry_in = ?backoff, "PKCS#11 token recovery failed");
            }
        }
        result
    }

    /// Marks the connection broken after an operation of `epoch` failed with `e`,
    /// unless a recovery already replaced that connection.
    fn mark_broken(&self, epoch: u64, e: &HsmError) {
        let Ok(mut c) = lock(&self.conn) else {
            return;
        };
        if c.epoch == epoch && matches!(c.status, Status::Ready) {
            tracing::warn!(token = %c.name, error = %e, "PKCS#11 token unusable; recovering");
            c.status = Status::Broken {
                reason: e.to_string(),
                next_attempt: Instant::now(),
                backoff: Duration::ZERO,
            };
        }
    }

    fn ensure_ready(&self) -> Result<(), HsmError> {
        if matches!(lock(&self.conn)?.status, Status::Ready) {
            return Ok(());
        }
        self.recover(false)
    }

    fn unavailable(&self, e: HsmError) -> HsmError {
        match e {
            HsmError::Pkcs11 { .. } if e.is_unavailable() => HsmError::Unavailable {
                token: self.token_name(),
                reason: e.to_string(),
            },
            other => other,
        }
    }

    /// Runs `f` with a session of its own. When the token turns out unusable the
    /// connection is recovered and `f` runs once more; `f` must therefore be safe to
    /// repeat.
    pub(crate) fn run<T>(
        &self,
        f: impl FnMut(&Op<'_>) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        self.run_inner(false, f)
    }

    /// [`Hsm::run`] for operations that write to the token or search it for
    /// objects: they take turns with each other across the process (see
    /// `Module::objects_turn`).
    pub(crate) fn run_exclusive<T>(
        &self,
        f: impl FnMut(&Op<'_>) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        self.run_inner(true, f)
    }

    fn run_inner<T>(
        &self,
        exclusive: bool,
        mut f: impl FnMut(&Op<'_>) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let mut retried = false;
        loop {
            self.ensure_ready().map_err(|e| self.unavailable(e))?;
            // Taken after any recovery, which takes it itself.
            let turn = if exclusive {
                Some(self.module.objects_turn()?)
            } else {
                None
            };
            let (epoch, result) = self.attempt(&mut f)?;
            drop(turn);
            match result {
                Err(e) if e.is_unavailable() => {
                    self.mark_broken(epoch, &e);
                    if retried {
                        return Err(self.unavailable(e));
                    }
                    retried = true;
                }
                other => return other,
            }
        }
    }

    fn attempt<T>(
        &self,
        f: &mut impl FnMut(&Op<'_>) -> Result<T, HsmError>,
    ) -> Result<(u64, Result<T, HsmError>), HsmError> {
        let guard = self.module.read()?;
        let generation = guard.generation();
        let (slot, epoch, name, conn_generation) = {
            let c = lock(&self.conn)?;
            (c.slot, c.epoch, c.name.clone(), c.generation)
        };
        let Some(slot) = slot.filter(|_| conn_generation == generation) else {
            // Another manager re-initialised the module since we connected: our
            // anchor, and with it our login, is gone.
            return Ok((
                epoch,
                Err(HsmError::Unavailable {
                    token: name.to_string(),
                    reason: "the PKCS#11 module was re-initialised".into(),
                }),
            ));
        };
        let pooled = match self.checkout(guard.ctx(), slot, generation, epoch) {
            Ok(p) => p,
            Err(e) => return Ok((epoch, Err(e))),
        };
        let result = f(&Op {
            session: &pooled.session,
            ctx: guard.ctx(),
            slot,
            generation,
            token: &name,
        });
        if result.as_ref().is_err_and(HsmError::is_unavailable) {
            self.discard(pooled, generation)?;
        } else {
            self.checkin(pooled)?;
        }
        Ok((epoch, result))
    }

    fn checkout(
        &self,
        ctx: &Pkcs11,
        slot: Slot,
        generation: u64,
        epoch: u64,
    ) -> Result<Pooled, HsmError> {
        let mut pool = lock(&self.pool)?;
        loop {
            while let Some(p) = pool.idle.pop() {
                if p.generation == generation && p.epoch == epoch {
                    return Ok(p);
                }
                pool.open -= 1;
                if p.generation == generation {
                    close_quietly(p.session);
                }
            }
            if pool.open < self.max_sessions {
                pool.open += 1;
                drop(pool);
                return match ctx.open_rw_session_no_drop(slot) {
                    Ok(session) => Ok(Pooled {
                        session,
                        generation,
                        epoch,
                    }),
                    Err(e) => {
                        lock(&self.pool)?.open -= 1;
                        self.returned.notify_one();
                        Err(e.into())
                    }
                };
            }
            pool = self.returned.wait(pool).map_err(|_| HsmError::Poisoned)?;
        }
    }

    fn checkin(&self, p: Pooled) -> Result<(), HsmError> {
        lock(&self.pool)?.idle.push(p);
        self.returned.notify_one();
        Ok(())
    }

    fn discard(&self, p: Pooled, generation: u64) -> Result<(), HsmError> {
        if p.generation == generation {
            close_quietly(p.session);
        }
        lock(&self.pool)?.open -= 1;
        self.returned.notify_one();
        Ok(())
    }

    /// Checks that the token answers and we are logged in, recovering first (without
    /// waiting for the backoff) if the connection is broken.
    pub(crate) fn health(&self) -> Result<(), HsmError> {
        self.recover(true).map_err(|e| self.unavailable(e))?;
        let login_required = lock(&self.conn)?.login_required;
        self.run(|op| {
            op.ctx.get_token_info(op.slot)?;
            let info = op.session.get_session_info()?;
            let logged_in = matches!(
                info.session_state(),
                SessionState::RoUser | SessionState::RwUser
            );
            if login_required && !logged_in {
                return Err(HsmError::Unavailable {
                    token: op.token.to_owned(),
                    reason: "the session is no longer logged in".into(),
                });
            }
            Ok(())
        })
    }

    /// Runs `f` with the module's context and the slot, holding off re-initialisation,
    /// without a pooled session (for benchmarks that open their own sessions).
    pub(crate) fn with_context<T>(
        &self,
        f: impl FnOnce(&Pkcs11, Slot, u64) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        self.ensure_ready().map_err(|e| self.unavailable(e))?;
        let guard = self.module.read()?;
        let (slot, generation) = {
            let c = lock(&self.conn)?;
            (c.slot, c.generation)
        };
        let slot = slot
            .filter(|_| generation == guard.generation())
            .ok_or_else(|| HsmError::Unavailable {
                token: self.token_name(),
                reason: "the PKCS#11 module was re-initialised".into(),
            })?;
        f(guard.ctx(), slot, generation)
    }
}

impl Drop for Hsm {
    fn drop(&mut self) {
        let Ok(guard) = self.module.read() else {
            return;
        };
        let generation = guard.generation();
        if let Ok(pool) = self.pool.get_mut() {
            for p in pool.idle.drain(..) {
                if p.generation == generation {
                    close_quietly(p.session);
                }
            }
        }
        if let Ok(c) = self.conn.get_mut()
            && let Some(anchor) = c.anchor.take()
            && c.generation == generation
        {
            // Other managers on the same token keep their own anchors, so this
            // does not log them out.
            close_quietly(anchor);
        }
    }
}

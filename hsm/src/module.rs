//! Loading a PKCS#11 module once per process, and re-initialising it when a token
//! must be found again.
//!
//! PKCS#11 state is per process, not per handle: dlopen returns the same library for
//! the same file, C_Initialize may be called once, and C_Finalize ends every session
//! and login of every user of that module in the process. So all managers that name
//! the same module share one [`Module`]; it is initialised by the first and finalised
//! when the last one goes.
//!
//! Re-initialisation (C_Finalize then C_Initialize) is the only way to make some
//! modules see a token again: SoftHSM2 reads its token directory only in
//! C_Initialize. Every PKCS#11 call runs under a read lock on the module's state and
//! re-initialisation takes the write lock, so it never pulls the library from under a
//! call in flight. Each re-initialisation bumps a generation number: sessions and
//! object handles of an older generation are dead, and their numbers may already
//! belong to new sessions, so they are forgotten rather than closed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, Weak};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};

use crate::error::HsmError;

/// Modules loaded in this process, by canonical path.
static LOADED: Mutex<Vec<(PathBuf, Weak<Module>)>> = Mutex::new(Vec::new());

struct State {
    initialized: bool,
    /// Whether we called C_Initialize (and so may call C_Finalize when done).
    owned: bool,
    generation: u64,
}

/// A loaded PKCS#11 module, shared by every manager in the process that uses it.
pub(crate) struct Module {
    path: PathBuf,
    key: PathBuf,
    ctx: Pkcs11,
    state: RwLock<State>,
    /// Taken for everything that writes to the token or looks for objects: logging
    /// in (SoftHSM2 rewrites its token file on every login), generating,
    /// destroying and finding keys. SoftHSM2 2.6 corrupts its object store when two
    /// threads write at once (C_GenerateKeyPair fails with CKR_GENERAL_ERROR or
    /// CKR_FUNCTION_FAILED, fresh objects read back empty, C_GetTokenInfo fails;
    /// SoftHSMv2 issue 573, the reason Parsec serialises too). These are rare, so
    /// taking turns costs nothing that matters, on any module; signing never takes
    /// it. Lock order: this, then [`Module::read`].
    objects: Mutex<()>,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Permission to make PKCS#11 calls: holds off re-initialisation while alive.
pub(crate) struct Guard<'a> {
    module: &'a Module,
    state: RwLockReadGuard<'a, State>,
}

impl Guard<'_> {
    pub(crate) fn ctx(&self) -> &Pkcs11 {
        &self.module.ctx
    }

    pub(crate) fn generation(&self) -> u64 {
        self.state.generation
    }
}

fn init_args() -> CInitializeArgs {
    // Sessions are used from many threads, so the module must lock for itself.
    CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)
}

/// Whether this is a static build that cannot load shared libraries.
pub const STATIC_BUILD: bool = cfg!(all(target_env = "musl", target_feature = "crt-static"));

fn load_error(path: &Path, reason: impl fmt::Display) -> HsmError {
    HsmError::ModuleLoad {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Loads and initialises the module at `path`, or returns the one already loaded.
pub(crate) fn load(path: &Path) -> Result<Arc<Module>, HsmError> {
    // A static musl binary has no dynamic loader: musl's dlopen there always fails.
    // Say why, rather than passing on dlopen's terse message.
    if STATIC_BUILD {
        return Err(HsmError::StaticBuild {
            path: path.to_owned(),
        });
    }
    // A bare file name is searched for by the dynamic loader, like dlopen does.
    let has_dir = path.components().count() > 1;
    if has_dir && !path.exists() {
        return Err(HsmError::ModuleNotFound {
            path: path.to_owned(),
        });
    }
    let key = if has_dir {
        path.canonicalize().map_err(|e| load_error(path, e))?
    } else {
        path.to_owned()
    };
    let mut loaded = LOADED.lock().map_err(|_| HsmError::Poisoned)?;
    loaded.retain(|(_, weak)| weak.strong_count() > 0);
    if let Some(module) = loaded
        .iter()
        .find(|(p, _)| *p == key)
        .and_then(|(_, weak)| weak.upgrade())
    {
        return Ok(module);
    }
    let ctx = Pkcs11::new(&key).map_err(|e| match e {
        CkError::LibraryLoading(le) => load_error(
            path,
            format!("{le}; is it a PKCS#11 module built for this machine?"),
        ),
        CkError::MissingSymbol(s) => load_error(path, format!("not a PKCS#11 module (no {s})")),
        other => load_error(path, other),
    })?;
    let owned = match ctx.initialize(init_args()) {
        Ok(()) => true,
        // Someone else in the process (another library) initialised it: share it, and
        // leave finalising to them.
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => false,
        Err(e) => {
            return Err(load_error(
                path,
                format!(
                    "C_Initialize failed: {}; check the module's own configuration (for SoftHSM2: SOFTHSM2_CONF and its token directory)",
                    HsmError::from(e)
                ),
            ));
        }
    };
    let module = Arc::new(Module {
        path: path.to_owned(),
        key: key.clone(),
        ctx,
        state: RwLock::new(State {
            initialized: true,
            owned,
            generation: 0,
        }),
        objects: Mutex::new(()),
    });
    loaded.push((key, Arc::downgrade(&module)));
    Ok(module)
}

impl Module {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the writers' turn (see the `objects` field). Take it before
    /// [`Module::read`], never while holding a guard.
    pub(crate) fn objects_turn(&self) -> Result<std::sync::MutexGuard<'_, ()>, HsmError> {
        self.objects.lock().map_err(|_| HsmError::Poisoned)
    }

    /// Takes the read lock for a series of PKCS#11 calls. Never call it while already
    /// holding a guard on the same thread: a waiting re-initialisation would deadlock.
    pub(crate) fn read(&self) -> Result<Guard<'_>, HsmError> {
        let state = self.state.read().map_err(|_| HsmError::Poisoned)?;
        Ok(Guard {
            module: self,
            state,
        })
    }

    /// C_Finalize and C_Initialize, unless someone already did it since `seen`.
    pub(crate) fn reinitialize(&self, seen: u64) -> Result<(), HsmError> {
        let mut state = self.state.write().map_err(|_| HsmError::Poisoned)?;
        if state.generation != seen && state.initialized {
            return Ok(());
        }
        if state.initialized {
            // C_Finalize takes the context by value; the library stays loaded through
            // our own handle.
            match self.ctx.clone().finalize() {
                Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiNotInitialized, _)) => {}
                Err(e) => {
                    tracing::warn!(module = %self.path.display(), error = %HsmError::from(e), "C_Finalize failed; initialising anyway")
                }
            }
            state.initialized = false;
            state.generation += 1;
        }
        match self.ctx.initialize(init_args()) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                state.initialized = true;
                state.owned = true;
                tracing::info!(module = %self.path.display(), generation = state.generation, "PKCS#11 module re-initialised");
                Ok(())
            }
            Err(e) => Err(load_error(
                &self.path,
                format!("C_Initialize failed: {}", HsmError::from(e)),
            )),
        }
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        let Ok(state) = self.state.get_mut() else {
            return;
        };
        if state.initialized && state.owned {
            // A manager opened while this one was being dropped may already share the
            // initialised library (it saw C_Initialize answer "already initialised");
            // finalising now would pull it from under that manager.
            let loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
            if loaded
                .iter()
                .any(|(k, weak)| *k == self.key && weak.strong_count() > 0)
            {
                return;
            }
            if let Err(e) = self.ctx.clone().finalize() {
                tracing::debug!(module = %self.path.display(), error = %HsmError::from(e), "C_Finalize failed");
            }
        }
    }
}

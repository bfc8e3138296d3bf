//! How many commands the native backend sent the TPM, by command, since the
//! process started: what `tessera-bench tpm-commands` counts per agent renewal.
//! Every transmission counts (a command the TPM asked for again counts twice).

use std::collections::BTreeMap;
use std::sync::Mutex;

static SENT: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

pub(super) fn record(command: &'static str) {
    let mut sent = SENT.lock().unwrap_or_else(|p| p.into_inner());
    *sent.entry(command).or_default() += 1;
}

/// The commands sent so far, by name (`TPM2_Create`, `TPM2_FlushContext`, ...).
pub fn sent() -> BTreeMap<&'static str, u64> {
    SENT.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

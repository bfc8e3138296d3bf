//! Binary sizes, stripped: a copy of each binary is stripped (`strip`), so a binary
//! already stripped measures the same.

use std::path::Path;
use std::process::Command;

use super::{Builds, pair};
use crate::report::Report;

fn stripped_mib(dir: &Path, binary: &Path, name: &str) -> Result<f64, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let copy = dir.join(name);
    std::fs::copy(binary, &copy).map_err(|e| format!("copy {}: {e}", binary.display()))?;
    let out = Command::new("strip")
        .arg(&copy)
        .output()
        .map_err(|e| format!("strip (binutils) cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "strip {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let len = std::fs::metadata(&copy)
        .map_err(|e| format!("{}: {e}", copy.display()))?
        .len();
    Ok(len as f64 / (1024.0 * 1024.0))
}

pub(super) fn run(r: &mut Report, dir: &Path, builds: &Builds) -> Result<(), String> {
    let dir = dir.join("sizes");
    let a = stripped_mib(&dir, &builds.a, "agent-a")?;
    let b = stripped_mib(&dir, &builds.b, "agent-b")?;
    pair(
        r,
        "binary_stripped_mib",
        "agent binary, stripped (MiB)",
        a,
        b,
    );
    Ok(())
}

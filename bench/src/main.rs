//! `tessera-bench`: benchmarks that start the real server and agent binaries and drive
//! them through the real protocols, printing a table and a JSON document.
//!
//! Every subcommand has `--quick`, a small run that proves it works (CI runs those);
//! the figures worth recording come from the full runs (see docs/BENCHMARKS.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod coldstart;
mod edge;
mod env;
mod footprint;
mod issuance;
mod report;
mod sim;
mod spire;
mod stats;
mod sync;
mod sync_shared;
mod tpm_commands;
mod tpm_keys;
mod vs_spire;
mod vs_spire_server;
mod workload;

#[derive(Debug, Parser)]
#[command(
    name = "tessera-bench",
    about = "Benchmarks of the real Tessera binaries"
)]
struct Cli {
    /// Small sizes and short runs: proves the benchmark works, measures little.
    #[arg(long, global = true)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Keep the working directory (logs, state) for inspection.
    #[arg(long, global = true)]
    keep: bool,
    /// Also run each scenario against SPIRE (its real server and agent, built by
    /// scripts/spire.sh) in the same run, with the same key type and sizes, and
    /// report SPIRE's figures and the ratios Tessera/SPIRE.
    #[arg(long, global = true)]
    vs_spire: bool,
    #[command(subcommand)]
    command: Command,
}

/// The parts of the `sync` benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SyncPart {
    /// One server on SQLite, thousands of agents.
    OneServer,
    /// Two servers sharing PostgreSQL.
    TwoServers,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// SVIDs/s through BatchNewX509Svid vs the raw signing rate.
    Issuance {
        /// Key managers to measure (memory; disk; pkcs11 on SoftHSM2). Default:
        /// memory and pkcs11, and disk too with --vs-spire.
        #[arg(long = "key-manager", value_enum)]
        key_managers: Vec<issuance::KeyManagerKind>,
    },
    /// FetchX509SVID latency and throughput vs a bare gRPC round trip.
    WorkloadApi,
    /// Thousands of agents syncing against many entries: one server (SQLite), then
    /// two servers sharing PostgreSQL (sync latency per server, and an entry written
    /// on one server to its SVID served through the other).
    Sync {
        /// Run only this part (default: both).
        #[arg(long, value_enum)]
        only: Option<SyncPart>,
    },
    /// Binary sizes and resident memory.
    Footprint,
    /// Agent start to first SVID, join token vs TPM attestation.
    ColdStart,
    /// Workload keys in the TPM: start to first TPM-held SVID, rotation of one,
    /// and the TPM's share (key + CSR) per backend.
    TpmWorkloadKeys,
    /// TPM commands per agent renewal (native backend, swtpm), without and with
    /// the agent-key certify and the measured-boot quote. Not part of `all`.
    TpmCommands,
    /// Two agent builds side by side (issue 13: the static agent as A, the glibc one
    /// as B): stripped size, idle memory with 0/100/1,000 SVIDs and after 1,000
    /// clients, Workload API p50 and throughput (X.509 and JWT), and the ratios A/B;
    /// then cold start with tpm_devid on swtpm, tpm_backend native vs esapi (binary
    /// B). Not part of `all`.
    Edge {
        /// Agent binary A (default: the tessera-agent next to tessera-bench).
        #[arg(long)]
        agent_a: Option<PathBuf>,
        /// Agent binary B (default: the tessera-agent next to tessera-bench); its
        /// TPM backends are the ones compared in the cold start.
        #[arg(long)]
        agent_b: Option<PathBuf>,
    },
    /// Every benchmark above but `edge`, in turn.
    All,
    /// (internal) raw C_Sign rate of a token, printed as a number.
    #[command(hide = true)]
    RawPkcs11Sign {
        #[arg(long)]
        module: PathBuf,
        #[arg(long)]
        token_label: String,
        #[arg(long)]
        pin_file: PathBuf,
        #[arg(long)]
        threads: usize,
        #[arg(long)]
        secs: f64,
    },
}

async fn run(cli: Cli, dir: &std::path::Path) -> Result<Vec<report::Report>, String> {
    use issuance::KeyManagerKind as Km;
    let quick = cli.quick;
    let vs = cli.vs_spire;
    let mut out = Vec::new();
    if vs && matches!(cli.command, Command::Edge { .. }) {
        return Err(
            "--vs-spire does not apply to edge (it compares two Tessera agent builds)".into(),
        );
    }
    if vs {
        spire::prepare()?;
    }
    let all = matches!(cli.command, Command::All);
    let key_managers = match &cli.command {
        Command::Issuance { key_managers } if !key_managers.is_empty() => key_managers.clone(),
        Command::Issuance { .. } | Command::All if vs => vec![Km::Memory, Km::Disk, Km::Pkcs11],
        Command::Issuance { .. } | Command::All => vec![Km::Memory, Km::Pkcs11],
        _ => Vec::new(),
    };
    let spire_issuance = if vs && !key_managers.is_empty() {
        Some(vs_spire_server::issuance(&dir.join("issuance-spire"), quick).await?)
    } else {
        None
    };
    for km in key_managers {
        let mut r = issuance::run(&dir.join(format!("issuance-{km:?}")), quick, km).await?;
        if let Some(s) = &spire_issuance {
            vs_spire_server::compare_issuance(&mut r, s);
        }
        out.push(r);
    }
    out.extend(spire_issuance);
    if all || matches!(cli.command, Command::WorkloadApi) {
        out.push(workload::run(&dir.join("workload-api"), quick, vs).await?);
    }
    let sync_parts = match &cli.command {
        Command::All | Command::Sync { only: None } => {
            vec![SyncPart::OneServer, SyncPart::TwoServers]
        }
        Command::Sync { only: Some(p) } => vec![*p],
        _ => Vec::new(),
    };
    for part in sync_parts {
        out.push(match part {
            SyncPart::OneServer => sync::run(&dir.join("sync"), quick, vs).await?,
            // Tessera only: `--vs-spire` sets up no pair of SPIRE servers.
            SyncPart::TwoServers => sync_shared::run(&dir.join("sync-two-servers"), quick).await?,
        });
    }
    if all || matches!(cli.command, Command::Footprint) {
        out.push(footprint::run(&dir.join("footprint"), quick, vs).await?);
    }
    if all || matches!(cli.command, Command::ColdStart) {
        out.push(coldstart::run(&dir.join("cold-start"), quick, vs).await?);
    }
    if (all && !vs) || matches!(cli.command, Command::TpmWorkloadKeys) {
        out.push(tpm_keys::run(&dir.join("tpm-workload-keys"), quick).await?);
    }
    if matches!(cli.command, Command::TpmCommands) {
        out.push(tpm_commands::run(&dir.join("tpm-commands"), quick).await?);
    }
    if let Command::Edge { agent_a, agent_b } = &cli.command {
        let builds = edge::Builds::resolve(agent_a.clone(), agent_b.clone())?;
        out.push(edge::run(&dir.join("edge"), quick, &builds).await?);
    }
    Ok(out)
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let mem_gib = stats::status_kb_meminfo().unwrap_or(0) as f64 / (1024.0 * 1024.0);
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": cpu,
        "memory_gib": (mem_gib * 10.0).round() / 10.0,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::RawPkcs11Sign {
        module,
        token_label,
        pin_file,
        threads,
        secs,
    } = &cli.command
    {
        return match issuance::raw_pkcs11_child(module, token_label, pin_file, *threads, *secs) {
            Ok(rate) => {
                println!("{rate}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("Error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    stats::raise_fd_limit();
    let dir = match tempfile::Builder::new().prefix("tessera-bench-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("Error: cannot make a working directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let keep = cli.keep;
    let json_path = cli.json.clone();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli, dir.path()));
    if keep {
        let kept = dir.keep();
        eprintln!("working directory kept: {}", kept.display());
    }
    match result {
        Ok(reports) => {
            println!("machine: {}", machine());
            for r in &reports {
                r.print();
            }
            let doc = serde_json::json!({
                "machine": machine(),
                "results": reports.iter().map(|r| (r.name.clone(), r.json())).collect::<serde_json::Map<_, _>>(),
            });
            println!("\nJSON: {doc}");
            if let Some(p) = json_path
                && let Err(e) =
                    std::fs::write(&p, serde_json::to_vec_pretty(&doc).unwrap_or_default())
            {
                eprintln!("Error: cannot write {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

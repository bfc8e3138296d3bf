//! The Workload API of A beside B: p50 of FetchX509SVID (time to the first message)
//! and of FetchJWTSVID, one client calling in turn, and calls per second with many
//! clients, each on its own connection; rounds alternate between A and B so that a
//! noisy neighbour hurts both alike.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tessera_swtpm_tests::Server;

use super::{Builds, pair, start_agent};
use crate::report::Report;
use crate::{env, stats};

const AUDIENCE: &str = "edge-bench";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    X509,
    Jwt,
}

async fn call_once(c: &mut env::Workload, call: Call) -> Result<(), tonic::Status> {
    match call {
        Call::X509 => env::fetch_once(c).await.map(|_| ()),
        Call::Jwt => {
            let r = c
                .fetch_jwtsvid(tessera_proto::workload::JwtsvidRequest {
                    audience: vec![AUDIENCE.into()],
                    spiffe_id: String::new(),
                })
                .await?
                .into_inner();
            if r.svids.is_empty() {
                return Err(tonic::Status::unavailable("no JWT-SVID"));
            }
            Ok(())
        }
    }
}

async fn p50_us(socket: &Path, call: Call, n: usize) -> Result<f64, String> {
    let mut c = env::workload(socket).await?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        call_once(&mut c, call)
            .await
            .map_err(|e| format!("{call:?}: {}", e.message()))?;
        samples.push(t.elapsed());
    }
    Ok(stats::latency(&mut samples).p50_us)
}

async fn per_sec(socket: &Path, call: Call, clients: usize, secs: Duration) -> Result<f64, String> {
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start_at = Instant::now() + Duration::from_millis(200);
    let end = start_at + secs;
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (socket, count, errors) = (socket.to_owned(), count.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = env::workload(&socket).await?;
            tokio::time::sleep_until(start_at.into()).await;
            while Instant::now() < end {
                let counter = if call_once(&mut c, call).await.is_ok() {
                    &count
                } else {
                    &errors
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let failed = errors.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!(
            "{failed} {call:?} calls failed with {clients} clients"
        ));
    }
    Ok(count.load(Ordering::Relaxed) as f64 / secs.as_secs_f64())
}

pub(super) async fn run(
    r: &mut Report,
    dir: &Path,
    quick: bool,
    builds: &Builds,
) -> Result<(), String> {
    let samples = if quick { 100 } else { 2000 };
    let secs = Duration::from_secs(if quick { 1 } else { 3 });
    let levels: &[usize] = if quick { &[1, 5] } else { &[1, 100] };
    let rounds = if quick { 1 } else { 3 };
    let server = Server::start(
        &dir.join("server"),
        &format!("[key_manager]\ntype = \"memory\"\n{}", env::SERVER_LIMITS),
    );
    let mut admin = env::admin(&server).await?;
    let tokens = env::tokens(&mut admin, 2).await?;
    for (t, tag) in tokens.iter().zip(["a", "b"]) {
        env::create_entries(
            &mut admin,
            vec![env::entry(
                format!("spiffe://example.org/bench/edge/{tag}"),
                &env::agent_id(t),
                env::my_selector(),
            )],
        )
        .await?;
    }
    let extra = format!("[key_manager]\ntype = \"memory\"\n{}", env::AGENT_LIMITS);
    let a = start_agent(&dir.join("a"), &server, &builds.a, Some(&tokens[0]), &extra);
    let b = start_agent(&dir.join("b"), &server, &builds.b, Some(&tokens[1]), &extra);
    for agent in [&a, &b] {
        env::wait_for_svid(&agent.socket, Duration::from_secs(30)).await?;
        // The first JWT-SVID for an audience is made by the server; later ones are
        // the agent's cache, which is what a workload sees in steady state.
        p50_us(&agent.socket, Call::Jwt, 1).await?;
    }
    for (call, name) in [(Call::X509, "x509"), (Call::Jwt, "jwt")] {
        let what = match call {
            Call::X509 => "FetchX509SVID first message",
            Call::Jwt => "FetchJWTSVID",
        };
        let (mut pa, mut pb) = (0.0, 0.0);
        for _ in 0..rounds {
            pa += p50_us(&a.socket, call, samples).await?;
            pb += p50_us(&b.socket, call, samples).await?;
        }
        let n = rounds as f64;
        pair(
            r,
            &format!("{name}_p50_us"),
            &format!("{what} p50 (µs)"),
            pa / n,
            pb / n,
        );
        for &c in levels {
            let (mut ta, mut tb) = (0.0, 0.0);
            for _ in 0..rounds {
                ta += per_sec(&a.socket, call, c, secs).await?;
                tb += per_sec(&b.socket, call, c, secs).await?;
            }
            pair(
                r,
                &format!("{name}_per_sec_{c}"),
                &format!("{what} calls/s, {c} clients"),
                ta / n,
                tb / n,
            );
        }
    }
    Ok(())
}

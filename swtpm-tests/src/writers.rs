//! Writers that create registration entries through a server's admin socket as fast
//! as it answers, recording every attempt: for failover tests, which check
//! afterwards that every acknowledged write was kept.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_proto::admin::CreateEntryRequest;
use tessera_proto::admin::admin_client::AdminClient;

use crate::Server;

/// One write through the admin API: when it was sent, when it was answered and how
/// it ended (the entry's ID, or the status code and message).
#[derive(Debug)]
pub struct Attempt {
    pub sent: Instant,
    pub done: Instant,
    pub outcome: Result<String, (tonic::Code, String)>,
}

/// Writers that create entries through the admin socket until told to stop, each
/// recording every attempt.
#[derive(Debug)]
pub struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Writers {
    /// Starts `count` writers creating entries `spiffe://example.org/<path>/<writer>/<n>`
    /// under `parent`, each with a selector of its own.
    pub fn start(server: &Server, count: usize, path: &str, parent: &str) -> Self {
        let (path, parent) = (path.to_owned(), parent.to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let admin = server.admin.clone();
        let (s, a, log) = (stop.clone(), acked.clone(), attempts.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for w in 0..count {
                    let (admin, stop, acked, log) =
                        (admin.clone(), s.clone(), a.clone(), log.clone());
                    let (path, parent) = (path.clone(), parent.clone());
                    tasks.push(tokio::spawn(async move {
                        let ch = tessera_proto::unix_channel(&admin)
                            .await
                            .expect("admin socket");
                        let mut client = AdminClient::new(ch);
                        let mut i = 0u64;
                        while !stop.load(Ordering::SeqCst) {
                            i += 1;
                            let entry = tessera_proto::types::Entry {
                                spiffe_id: format!("spiffe://example.org/{path}/{w}/{i}"),
                                parent_id: parent.clone(),
                                selectors: vec![format!("unix:uid:{}", 20_000 + i)],
                                ..Default::default()
                            };
                            let sent = Instant::now();
                            let outcome = client
                                .create_entry(CreateEntryRequest { entry: Some(entry) })
                                .await
                                .map(|r| r.into_inner().id)
                                .map_err(|s| (s.code(), s.message().to_owned()));
                            let failed = outcome.is_err();
                            if !failed {
                                acked.fetch_add(1, Ordering::SeqCst);
                            }
                            log.lock().expect("attempt log").push(Attempt {
                                sent,
                                done: Instant::now(),
                                outcome,
                            });
                            if failed {
                                // A failing database answers at once: do not spin.
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }));
                }
                for t in tasks {
                    t.await.expect("writer task");
                }
            });
        });
        Self {
            stop,
            acked,
            attempts,
            thread,
        }
    }

    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    /// Successful writes sent after `t`.
    pub fn acked_after(&self, t: Instant) -> usize {
        self.attempts
            .lock()
            .expect("attempt log")
            .iter()
            .filter(|a| a.sent > t && a.outcome.is_ok())
            .count()
    }

    /// Stops the writers and returns every attempt.
    pub fn finish(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("writers thread");
        Arc::try_unwrap(self.attempts)
            .expect("the writers are done")
            .into_inner()
            .expect("attempt log")
    }
}

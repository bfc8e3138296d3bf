//! Every benchmark runs in its short mode, against Tessera and against SPIRE in the
//! same run (`--vs-spire`), and reports the figures it promises, SPIRE's and the
//! ratios Tessera/SPIRE included (their values are not judged here: timings are for
//! the full runs, recorded in docs/BENCHMARKS.md).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::process::Command;

#[test]
fn every_benchmark_runs_in_quick_mode() {
    let dir = tessera_swtpm_tests::test_dir("bench");
    let json = dir.path().join("bench.json");
    let out = Command::new(tessera_swtpm_tests::bin("tessera-bench"))
        .args(["--quick", "--vs-spire", "all", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tessera-bench failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let results = &doc["results"];
    let positive = |bench: &str, keys: &[&str]| {
        let r = &results[bench];
        assert!(r.is_object(), "no results for {bench}: {doc}");
        for k in keys {
            let v = r[*k]
                .as_f64()
                .unwrap_or_else(|| panic!("{bench}: {k} missing in {r}"));
            assert!(v > 0.0, "{bench}: {k} = {v}");
        }
    };
    for km in ["memory", "disk", "pkcs11"] {
        positive(
            &format!("issuance ({km} key manager)"),
            &[
                "svids_per_sec_1_agent",
                "svids_per_sec_n_agents",
                "raw_sign_per_sec",
                "ratio_1_agent",
                "ratio_n_agents",
                "server_cpu_us_per_svid",
                "csr_check_per_sec",
                // SPIRE (disk key manager), measured in the same run, and the ratios.
                "spire_svids_per_sec_1_agent",
                "spire_svids_per_sec_n_agents",
                "spire_server_cpu_us_per_svid",
                "tessera_over_spire_svids_per_sec_1_agent",
                "tessera_over_spire_svids_per_sec_n_agents",
            ],
        );
    }
    positive(
        "issuance (SPIRE, disk key manager)",
        &[
            "svids_per_sec_1_agent",
            "svids_per_sec_n_agents",
            "server_cpu_us_per_svid",
        ],
    );
    // Metrics on and scraped against off, in the same run.
    positive(
        "issuance (memory key manager)",
        &[
            "metrics_on_svids_per_sec",
            "metrics_off_svids_per_sec",
            "metrics_on_over_off",
        ],
    );
    positive(
        "workload-api",
        &[
            "metrics_on_over_off_p50",
            "metrics_on_over_off_throughput",
            "fetch_first_message_p50_us",
            "fetch_first_message_p99_us",
            "bare_unary_p50_us",
            "latency_ratio_p50",
            "fetches_per_sec_1",
            "bare_per_sec_1",
            "agent_rss_mib_after",
            "agent_rss_mib_settled",
            "spire_fetch_first_message_p50_us",
            "spire_fetch_first_message_p99_us",
            "tessera_over_spire_fetch_first_message_p50_us",
            "spire_fetches_per_sec_1",
            "spire_fetches_per_sec_10",
            "spire_fetches_per_sec_50",
            "tessera_over_spire_fetches_per_sec_1",
            "tessera_over_spire_fetches_per_sec_50",
            "spire_agent_rss_mib_after",
            "spire_agent_rss_mib_settled",
            "tessera_over_spire_agent_rss_mib_after",
        ],
    );
    for key in ["agent_rss_mib_again", "agent_rss_mib_streams"] {
        let rounds = results["workload-api"][key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} is a list"));
        assert_eq!(rounds.len(), 3, "{key}: {rounds:?}");
        assert!(rounds.iter().all(|v| v.as_f64().is_some_and(|m| m > 0.0)));
    }
    positive(
        "sync",
        &[
            "syncs",
            "sync_p50_ms",
            "sync_p99_ms",
            "server_cpu_per_sec",
            "server_peak_rss_mib",
            "big_agent_all_cached_secs",
            "spire_syncs",
            "spire_sync_p50_ms",
            "spire_sync_p99_ms",
            "tessera_over_spire_sync_p99_ms",
            "spire_server_cpu_per_sec",
            "spire_server_rss_mib",
            "spire_server_peak_rss_mib",
            "tessera_over_spire_server_peak_rss_mib",
        ],
    );
    assert_eq!(
        results["sync"]["entries_held_total"], results["sync"]["entries"],
        "agents did not get their entries"
    );
    assert_eq!(
        results["sync"]["spire_entries_held_total"].as_f64(),
        results["sync"]["entries"].as_f64(),
        "SPIRE's simulated agents did not get their entries"
    );
    // The capacity search ran on both (how far it got is a timing, not judged).
    for key in ["capacity_levels", "spire_capacity_levels"] {
        let levels = results["sync"][key]
            .as_array()
            .unwrap_or_else(|| panic!("sync: {key} is a list"));
        assert!(!levels.is_empty(), "sync: {key} is empty");
        for l in levels {
            assert!(l[0].as_u64().is_some_and(|a| a > 0), "{key}: {l}");
            assert!(l[1].as_f64().is_some_and(|p| p > 0.0), "{key}: {l}");
        }
    }
    for key in ["capacity_agents", "spire_capacity_agents"] {
        assert!(
            results["sync"][key].as_f64().is_some(),
            "sync: {key} missing"
        );
    }
    // Two servers sharing PostgreSQL: sync latency and CPU per server, and an entry
    // written on A to its SVID served through an agent attached to B.
    positive(
        "sync-two-servers",
        &[
            "syncs",
            "sync_p50_ms",
            "sync_p99_ms",
            "server_a_syncs",
            "server_b_syncs",
            "server_a_sync_p50_ms",
            "server_a_sync_p99_ms",
            "server_b_sync_p50_ms",
            "server_b_sync_p99_ms",
            "server_a_cpu_per_sec",
            "server_b_cpu_per_sec",
            "server_event_poll_ms",
            "write_to_served_sync_500ms_count",
            "write_to_served_sync_500ms_p50_ms",
            "write_to_served_sync_500ms_p99_ms",
            "write_to_served_sync_500ms_max_ms",
            "write_to_index_b_p50_ms",
            "write_to_index_b_p99_ms",
            "create_ack_p50_ms",
        ],
    );
    assert_eq!(
        results["sync-two-servers"]["entries_held_total"], results["sync-two-servers"]["entries"],
        "the agents of the two servers did not get their entries"
    );
    positive(
        "footprint",
        &[
            "agent_binary_mib",
            "server_binary_mib",
            "agent_rss_mib_0_svids",
            "agent_rss_mib_100_svids",
            "server_rss_mib",
            "spire_agent_binary_mib",
            "spire_server_binary_mib",
            "tessera_over_spire_agent_binary_mib",
            "spire_agent_rss_mib_0_svids",
            "spire_agent_rss_mib_10_svids",
            "spire_agent_rss_mib_100_svids",
            "tessera_over_spire_agent_rss_mib_100_svids",
            "server_rss_mib_2000_entries",
            "spire_server_rss_mib_2000_entries",
            "tessera_over_spire_server_rss_mib_2000_entries",
        ],
    );
    positive(
        "cold-start",
        &[
            "join_token_ms",
            "tpm_devid_ms",
            "tpm_ek_ms",
            "spire_join_token_ms",
            "tessera_over_spire_join_token_ms",
        ],
    );
    assert!(doc["machine"]["cpus"].as_u64().unwrap() > 0);
}

/// `edge` in quick mode (tiny counts) with the same agent as A and B: every figure
/// of both and every ratio is there and positive; the cold start measures each TPM
/// backend the agent contains and names the ones it lacks.
#[test]
fn edge_runs_in_quick_mode() {
    let dir = tessera_swtpm_tests::test_dir("bench-edge");
    let json = dir.path().join("edge.json");
    let agent = tessera_swtpm_tests::bin("tessera-agent");
    let out = Command::new(tessera_swtpm_tests::bin("tessera-bench"))
        .args(["--quick", "edge", "--agent-a"])
        .arg(&agent)
        .arg("--agent-b")
        .arg(&agent)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tessera-bench edge failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let r = &doc["results"]["edge"];
    let mut keys = vec![
        "binary_stripped_mib".to_owned(),
        "rss_mib_burst".to_owned(),
        "pss_mib_burst".to_owned(),
        "rss_mib_settled".to_owned(),
        "pss_mib_settled".to_owned(),
        "x509_p50_us".to_owned(),
        "jwt_p50_us".to_owned(),
    ];
    for n in [0, 5, 20] {
        keys.push(format!("rss_mib_{n}_svids"));
        keys.push(format!("pss_mib_{n}_svids"));
    }
    for c in [1, 5] {
        keys.push(format!("x509_per_sec_{c}"));
        keys.push(format!("jwt_per_sec_{c}"));
    }
    for k in &keys {
        for side in ["a", "b", "a_over_b"] {
            let v = r[format!("{k}_{side}")]
                .as_f64()
                .unwrap_or_else(|| panic!("edge: {k}_{side} missing in {r}"));
            assert!(v > 0.0, "edge: {k}_{side} = {v}");
        }
    }
    // The same file as A and B: the sizes are equal.
    assert_eq!(r["binary_stripped_mib_a_over_b"].as_f64(), Some(1.0), "{r}");
    // esapi is built into the default agent and measured; native either measured
    // with its ratio or named as missing.
    assert!(
        r["cold_start_esapi_ms"].as_f64().is_some_and(|v| v > 0.0),
        "{r}"
    );
    match r["cold_start_native_ms"].as_f64() {
        Some(v) => {
            assert!(v > 0.0, "{r}");
            assert!(
                r["cold_start_native_over_esapi"]
                    .as_f64()
                    .is_some_and(|v| v > 0.0),
                "{r}"
            );
        }
        None => assert_eq!(r["cold_start_native_ms"], "native: not built in", "{r}"),
    }
}

/// `tpm-workload-keys` in quick mode (not in `all --vs-spire`: SPIRE has no
/// TPM-held workload keys to compare with): every figure is there and positive.
#[test]
fn tpm_workload_keys_runs_in_quick_mode() {
    let dir = tessera_swtpm_tests::test_dir("bench-tpm-keys");
    let json = dir.path().join("tpm.json");
    let out = Command::new(tessera_swtpm_tests::bin("tessera-bench"))
        .args(["--quick", "tpm-workload-keys", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tessera-bench tpm-workload-keys failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let r = &doc["results"]["tpm-workload-keys"];
    for k in [
        "cold_start_ms",
        "rotate_ms",
        "key_and_csr_native_ms",
        "key_and_csr_esapi_ms",
    ] {
        let v = r[k]
            .as_f64()
            .unwrap_or_else(|| panic!("tpm-workload-keys: {k} missing in {r}"));
        assert!(v > 0.0, "tpm-workload-keys: {k} = {v}");
    }
}

/// `tpm-commands` in quick mode: each renewal variant's count is there, and the
/// agent-key certify and the quote each add commands (five and three plus one a
/// PCR, as docs/BENCHMARKS.md explains).
#[test]
fn tpm_commands_runs_in_quick_mode() {
    let dir = tessera_swtpm_tests::test_dir("bench-tpm-commands");
    let json = dir.path().join("tpm.json");
    let out = Command::new(tessera_swtpm_tests::bin("tessera-bench"))
        .args(["--quick", "tpm-commands", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tessera-bench tpm-commands failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let r = &doc["results"]["tpm-commands"];
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {r}"));
    assert!(n("plain") > 0, "{r}");
    assert_eq!(n("certify"), n("plain") + 5, "{r}");
    assert_eq!(n("certify_quote"), n("certify") + 3 + 2, "{r}");
    assert!(
        r["certify_quote_by_command"]
            .as_str()
            .unwrap()
            .contains("TPM2_Quote 1"),
        "{r}"
    );
}

//! The factory floor: a wrong clock is corrected from the service's `Date`, and (below) an
//! outage of the service costs no device.

mod common;

use common::*;
use mqtt_provision::sim::{SimConfig, SimHandle};

const FAST: &[&str] = &["--account-qps", "3000", "--ip-qps", "3000"];

fn fast() -> SimConfig {
    SimConfig {
        account_qps: 5000,
        ip_qps: 5000,
        ..SimConfig::default()
    }
}

/// Answers refused for their timestamp, all actions.
fn timestamp_refusals(sim: &SimHandle) -> u64 {
    sim.stats()
        .calls
        .values()
        .flat_map(|by_code| by_code.iter())
        .filter(|(code, _)| code.starts_with("InvalidTimeStamp"))
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test]
async fn the_simulator_dates_every_answer_as_the_gateway_does() {
    let sim = simulator(fast()).await;
    let answer = reqwest::get(sim.endpoint()).await.unwrap();
    let date = answer.headers().get("date").expect("a Date header");
    let date = date.to_str().unwrap();
    // IMF-fixdate: "Thu, 03 Dec 2026 13:31:37 GMT".
    assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
    sim.stop().await;
}

#[tokio::test]
async fn a_clock_twenty_minutes_off_either_way_is_corrected_from_the_service() {
    for (error, signature) in [("-1200", "v3"), ("1200", "v1"), ("-1200", "v1")] {
        let dir = tempfile::tempdir().unwrap();
        let sim = simulator(fast()).await;
        let ctx = context_for(&sim);
        let csv = devices_csv(dir.path(), "clock", 400);
        let ledger = dir.path().join("l.sqlite");
        let run = Run::new(&["register"], &csv, &ledger, &sim);
        let extra = [
            FAST,
            &["--test-clock-error", error, "--signature", signature],
        ]
        .concat();
        assert_eq!(
            run.exit(&extra, &ctx).await,
            0,
            "clock {error} s, {signature}"
        );
        assert_eq!(
            simulator_credentials(&sim).len(),
            400,
            "clock {error} s, {signature}"
        );
        // The first call measures the clock while the others wait for its answer.
        let refused = timestamp_refusals(&sim);
        assert!(
            (1..=2).contains(&refused),
            "clock {error} s, {signature}: {refused} calls refused for their timestamp"
        );
        sim.stop().await;
    }
}

#[tokio::test]
async fn a_right_clock_is_never_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(fast()).await;
    let ctx = context_for(&sim);
    let csv = devices_csv(dir.path(), "clock", 200);
    let ledger = dir.path().join("l.sqlite");
    let run = Run::new(&["register"], &csv, &ledger, &sim);
    let extra = [FAST, &["--test-clock-error", "3"]].concat();
    assert_eq!(run.exit(&extra, &ctx).await, 0);
    assert_eq!(timestamp_refusals(&sim), 0);
    sim.stop().await;
}

//! `switchyard demo` end to end, at a size that fits CI.

use switchyard::demo::{run, DemoArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_walks_every_phase_without_a_client_error() {
    let summary = run(DemoArgs {
        rows: 20_000,
        duration: 1,
        sessions: 2,
    })
    .await
    .expect("the demo completes");
    assert_eq!(
        summary.client_errors, 0,
        "first error: {:?}",
        summary.first_error
    );
    assert!(summary.statements > 100, "{summary:?}");
    assert!(summary.backfill_rows_per_second > 0.0, "{summary:?}");
    assert_eq!(
        summary.final_columns,
        vec![("state".to_string(), "NO".to_string())]
    );
}

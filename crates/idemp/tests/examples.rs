//! Runs every example of `examples/` and checks what it claims.

#[allow(dead_code)]
#[path = "../examples/tool_layer.rs"]
mod tool_layer;

#[allow(dead_code)]
#[path = "../examples/queue_worker.rs"]
mod queue_worker;

#[cfg(all(feature = "client", feature = "http"))]
#[allow(dead_code)]
#[path = "../examples/agent_loop.rs"]
mod agent_loop;

#[tokio::test]
async fn tool_layer_caches_reads_and_guards_writes() {
    let c = tool_layer::run().await.unwrap();
    assert_eq!(c.lookups, 1, "three identical reads, one execution");
    assert_eq!(c.charges, 1, "a duplicate charge call replays");
    assert_eq!(c.deletions, 1, "a destructive call runs once per key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_worker_sends_each_email_once() {
    let r = queue_worker::run().await.unwrap();
    assert_eq!(r.deliveries, 40);
    assert_eq!(r.emails_sent as usize, r.distinct_jobs);
}

#[cfg(all(feature = "client", feature = "http"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_loop_bills_each_turn_once() {
    let r = agent_loop::run().await.unwrap();
    assert_eq!(r.turns, 3);
    assert_eq!(
        r.attempts, 9,
        "529, lost response, replay: three attempts a turn"
    );
    assert_eq!(
        r.billed, 3,
        "one billed completion a turn despite the lost responses"
    );
    assert_eq!(r.replays, 3);
}

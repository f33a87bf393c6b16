//! A queue worker that gets the same job twice.
//!
//! ```text
//! cargo run -p idemp --example queue_worker
//! ```
//!
//! Queues deliver at least once: a consumer that crashes before acking, a visibility
//! timeout that passes, a producer that retries its publish. Here two workers share
//! one embedded SQLite store (the default store: several processes could share the
//! file the same way) and consume a queue in which every "send welcome email" job
//! appears twice, sometimes at the same moment. Each email goes out once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use idemp::guard::{Guard, OnDuplicate};
use idemp::key::Key;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Job {
    message_id: String,
    user: String,
}

#[derive(Debug)]
pub struct Report {
    pub deliveries: usize,
    pub emails_sent: u32,
    pub distinct_jobs: usize,
}

pub async fn run() -> Result<Report, Box<dyn std::error::Error + Send + Sync>> {
    let dir = std::env::temp_dir().join(format!("idemp-queue-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("jobs.db");
    let store = idemp::store::open(&format!("sqlite://{}", db.display())).await?;

    let guard = Guard::builder(store)
        .scope("welcome-email")
        .lease(Duration::from_secs(30))
        .on_duplicate(OnDuplicate::Wait(Duration::from_secs(10)))
        .build();

    // 20 jobs, each delivered twice, interleaved.
    let mut queue = Vec::new();
    for i in 0..20 {
        let job = Job {
            message_id: format!("msg-{i}"),
            user: format!("user{i}@example.com"),
        };
        queue.push(job.clone());
        queue.push(job);
    }
    let deliveries = queue.len();
    let queue = Arc::new(Mutex::new(queue));
    let sent = Arc::new(AtomicU32::new(0));

    let mut workers = Vec::new();
    for w in 0..2 {
        let (queue, guard, sent) = (queue.clone(), guard.clone(), sent.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(job) = queue.lock().await.pop() else {
                    return Ok::<_, idemp::GuardError<std::io::Error>>(());
                };
                // The key is the job's identity, not the delivery's.
                let key = Key::builder("welcome-email")
                    .part_str(&job.message_id)
                    .build();
                let outcome: String = guard
                    .run(key.as_str(), || async {
                        sent.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(2)).await; // the SMTP call
                        Ok::<_, std::io::Error>(format!("sent to {} by worker {w}", job.user))
                    })
                    .await?;
                tracing::debug!(%outcome, "acked");
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let report = Report {
        deliveries,
        emails_sent: sent.load(Ordering::SeqCst),
        distinct_jobs: 20,
    };
    println!(
        "{} deliveries of {} distinct jobs -> {} emails sent",
        report.deliveries, report.distinct_jobs, report.emails_sent
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    run().await.map(|_| ())
}

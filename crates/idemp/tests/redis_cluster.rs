//! The Redis store on a private 3-master Redis Cluster (three `redis-server
//! --cluster-enabled yes` on free ports, joined with `redis-cli --cluster create`):
//! records spread over every slot owner, `list`/`stats` walk every master,
//! notifications cross nodes, and the whole conformance suite passes.
#![cfg(feature = "redis")]

mod redis_support;

use std::sync::Arc;
use std::time::Duration;

use idemp::store::redis::{RedisOptions, RedisStore};
use idemp::store::{
    Claim, ClaimOutcome, Codec, ListQuery, Outcome, RecordKey, State, Store, StoreAdmin,
    StoreError, StoreUrl,
};
use redis_support::*;

async fn cluster_store(cluster: &PrivateCluster, prefix: &str) -> RedisStore {
    let url: StoreUrl = cluster.url(prefix).parse().expect("cluster URL");
    RedisStore::connect_with(&url, RedisOptions::default().check_durability(false))
        .await
        .expect("cluster reachable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_spread_over_the_cluster_and_every_operation_works() {
    let cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let store = Arc::new(cluster_store(&cluster, &unique_prefix("cluster")).await);
    assert_eq!(
        store.durability().await.unwrap().appendonly.as_deref(),
        Some("yes")
    );

    const KEYS: usize = 300;
    let ids: Vec<RecordKey> = (0..KEYS)
        .map(|i| RecordKey::new(if i % 2 == 0 { "a" } else { "b" }, format!("k{i:03}")))
        .collect();
    let mut tokens = Vec::new();
    for id in &ids {
        match store.claim(&Claim::new(id.clone())).await.unwrap() {
            ClaimOutcome::Acquired { token, .. } => tokens.push(token),
            other => panic!("{other:?}"),
        }
    }
    // every master holds some records
    for node in &cluster.nodes {
        let n: u64 = redis::cmd("DBSIZE").query(&mut node.admin()).unwrap();
        assert!(n > 0, "node {} holds no record", node.port);
    }
    // a waiter on one record is woken across nodes
    let waited = ids[7].clone();
    let waiter = {
        let (store, id) = (store.clone(), waited.clone());
        tokio::spawn(async move { store.wait(&id, Duration::from_secs(60)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (id, t) in ids.iter().zip(&tokens) {
        store
            .complete(
                id,
                *t,
                Outcome::new(Codec::Raw, id.key.clone().into_bytes()),
                Duration::from_secs(600),
            )
            .await
            .unwrap();
    }
    let rec = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("woken")
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        rec.state,
        State::Completed(Outcome::new(Codec::Raw, waited.key.clone().into_bytes()))
    );

    // stats and list see every master
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.completed, KEYS as u64);
    let mut seen = Vec::new();
    let mut q = ListQuery {
        limit: 64,
        ..ListQuery::default()
    };
    loop {
        let page = store.list(&q).await.unwrap();
        seen.extend(page.records.into_iter().map(|r| r.id));
        match page.next {
            Some(n) => q.after = Some(n),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected);
    let only_b = store
        .list(&ListQuery {
            scope: Some("b".into()),
            limit: 1000,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(only_b.records.len(), KEYS / 2);

    // fencing, release, purge on whichever node owns the key
    let id = RecordKey::new("c", "{tag}-looking key");
    let ClaimOutcome::Acquired { token: t1, .. } =
        store.claim(&Claim::new(id.clone())).await.unwrap()
    else {
        panic!()
    };
    store.release(&id, t1).await.unwrap();
    let ClaimOutcome::Acquired { token: t2, .. } =
        store.claim(&Claim::new(id.clone())).await.unwrap()
    else {
        panic!()
    };
    assert!(t2 > t1);
    assert!(matches!(
        store.complete(&id, t1, Outcome::new(Codec::Raw, vec![]), Duration::from_secs(5)).await,
        Err(StoreError::Fenced { current: Some(c), .. }) if c == t2
    ));
    assert!(store.purge(&id).await.unwrap());
    assert!(store.clear().await.unwrap() >= KEYS as u64);
    assert_eq!(store.stats().await.unwrap().completed, 0);
}

#[cfg(feature = "testkit")]
mod conformance {
    use super::*;
    use async_trait::async_trait;
    use idemp::clock::ManualClock;
    use idemp::testkit::{Fixture, KitConfig, StoreFactory};

    struct ClusterFactory {
        url_of: Box<dyn Fn(&str) -> String + Send + Sync>,
    }

    #[async_trait]
    impl StoreFactory for ClusterFactory {
        async fn create(&self) -> Fixture {
            let url: StoreUrl = (self.url_of)(&unique_prefix("ckit")).parse().unwrap();
            let store =
                RedisStore::connect_with(&url, RedisOptions::default().check_durability(false))
                    .await
                    .expect("cluster reachable");
            let clock = ManualClock::starting_now();
            Fixture::manual(store.with_clock(Arc::new(clock.clone())), clock)
        }
        fn config(&self) -> KitConfig {
            // stats walks every master after each model step: fewer sequences
            KitConfig::default().model(5, 60)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_conformance_suite_passes_on_a_cluster() {
        let cluster = tokio::task::spawn_blocking(PrivateCluster::start)
            .await
            .unwrap();
        let hosts: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let hosts = hosts.join(",");
        let factory = ClusterFactory {
            url_of: Box::new(move |prefix| format!("redis+cluster://{hosts}?prefix={prefix}")),
        };
        idemp::testkit::run_all(&factory).await;
    }
}

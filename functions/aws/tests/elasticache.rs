//! The admin cache description over the ElastiCache API as moto speaks it. moto answers
//! `DescribeServerlessCaches` with HTTP 500, so this exercises the fallback path and says so.

use taskq_aws::elasticache::ElastiCacheDescriber;
use taskq_core::cache::CacheDescriber;

#[tokio::test]
async fn a_node_based_cache_is_described_after_the_serverless_call_fails() {
    let Some(endpoint) =
        taskq_aws::testing::endpoint("a_node_based_cache_is_described_after_the_serverless_call_fails")
    else {
        return;
    };
    let sdk = taskq_aws::testing::sdk_config(&endpoint).await;
    let client = aws_sdk_elasticache::Client::new(&sdk);
    let name = taskq_aws::testing::unique("c");
    client
        .create_cache_cluster()
        .cache_cluster_id(&name)
        .engine("redis")
        .cache_node_type("cache.t4g.micro")
        .num_cache_nodes(1)
        .send()
        .await
        .expect("moto creates cache clusters");

    // The client the API uses is built on this first describe (from_env -> from_config).
    let d = ElastiCacheDescriber::from_config(&sdk, &name).describe().await.unwrap();
    println!("described_by: {:?}", d.described_by);
    assert_eq!(d.kind, "cache_cluster");
    assert_eq!(d.name, name);
    assert_eq!(d.engine.as_deref(), Some("redis"));
    assert!(d.status.is_some());
    assert_eq!(d.described_by.len(), 3, "{:?}", d.described_by);
    assert!(
        d.described_by[0].starts_with("DescribeServerlessCaches: failed"),
        "{:?}",
        d.described_by
    );
    assert_eq!(d.described_by[2], "DescribeCacheClusters: found");

    let missing = ElastiCacheDescriber::new(client, "no-such-cache").describe().await;
    let err = missing.expect_err("an unknown cache is an error").to_string();
    assert!(!err.is_empty());
}

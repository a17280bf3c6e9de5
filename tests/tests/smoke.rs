use switchyard_tests::{Cluster, TestProxy, TestProxyOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let cluster = Cluster::start().unwrap();
    let proxy = TestProxy::start(&cluster, TestProxyOptions::default()).await.unwrap();
    for user in ["trust_user", "md5_user", "scram_user"] {
        let c = proxy.connect(user).await.unwrap();
        let row = c.query_one("select current_user::text, $1::int + 1", &[&41i32]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), user);
        assert_eq!(row.get::<_, i32>(1), 42);
    }
}

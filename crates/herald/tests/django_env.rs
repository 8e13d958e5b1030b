//! Issue 13 (8): the Django bridge configured from the environment alone, with a list
//! value written the way operators write lists in env files (comma-separated).

mod support;

#[allow(unused_imports)]
#[path = "../../herald-django/tests/support/mod.rs"]
mod djsupport;

use std::time::Duration;

use djsupport::DjangoSide;
use herald_testkit::redis::RedisProcess;
use support::WsClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_hosts_from_a_comma_separated_env_list() {
    let first = RedisProcess::start();
    let second = RedisProcess::start();
    let side = DjangoSide::core(vec![first.url(), second.url()]);
    let mut cmd = std::process::Command::new(support::herald_bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .env("HERALD_DJANGO_ENABLED", "true")
        .env("HERALD_DJANGO_HOSTS", side.hosts.join(","))
        .stderr(std::process::Stdio::inherit());
    let (mut child, addr) = support::spawn_serve(cmd);
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while support::get_status(addr, "/readyz").await != 200 {
        assert!(tokio::time::Instant::now() < until, "ready within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both shards are used: the group key of user.42 lives on one of them, herald's queue
    // on the one its name hashes to; a group_send through Django's two hosts arrives.
    let mut client = WsClient::connect(&format!("ws://{addr}/message/42/stream/"))
        .await
        .unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        side.group_send("user.42", "from env", 1).await;
        match client
            .recv_within(Duration::from_millis(500))
            .await
            .unwrap()
        {
            Some(support::Received::Text(t)) => {
                assert_eq!(t, "from env");
                break;
            }
            other => assert!(
                tokio::time::Instant::now() < until,
                "nothing from Django: {other:?}"
            ),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

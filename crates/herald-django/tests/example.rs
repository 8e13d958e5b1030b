//! The example Django project (`examples/django`) pushes through the bridge: its
//! management command and its view both reach herald's layer.

mod support;

use std::path::Path;

use herald_core::memory::MemoryLayerConfig;
use herald_core::{Layer, MemoryLayer, PayloadKind};
use herald_django::DjangoBridge;
use herald_testkit::redis::RedisProcess;
use support::*;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

async fn run_example(redis_url: &str, args: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/django");
    let output = Command::new(python())
        .args(args)
        .current_dir(dir)
        .env("REDIS_URL", redis_url)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("DJANGO_SETTINGS_MODULE", "notifysite.settings")
        .kill_on_drop(true)
        .output();
    let output = within(DEADLINE, output, "the example's python")
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The view, called through Django's test client (no CSRF token needed there).
const POST_TO_VIEW: &str = "
import django
django.setup()
from django.test.utils import setup_test_environment
setup_test_environment()
from django.test import Client
response = Client().post('/notify/42/', {'message': 'from the view'})
assert response.status_code == 200, response.content
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_command_and_view_reach_herald() {
    let redis = RedisProcess::start();
    let (layer, mut incoming) = MemoryLayer::new(MemoryLayerConfig::default());
    layer.subscribe(&group("user.42")).await.unwrap();
    let shutdown = CancellationToken::new();
    let config = DjangoSide::core(vec![redis.url()]).herald_config();
    let bridge = DjangoBridge::start(config, layer, 1 << 20, shutdown.clone())
        .await
        .unwrap();
    bridge.group_active(&group("user.42")).await.unwrap();

    run_example(
        &redis.url(),
        &["manage.py", "notify", "42", "from the command"],
    )
    .await;
    run_example(&redis.url(), &["-c", POST_TO_VIEW]).await;

    for expected in ["from the command", "from the view"] {
        let message = within(DEADLINE, incoming.recv(), expected).await.unwrap();
        assert_eq!(message.group.as_str(), "user.42");
        assert_eq!(message.payload.kind(), PayloadKind::Text);
        let notification: serde_json::Value =
            serde_json::from_slice(message.payload.data()).unwrap();
        assert_eq!(notification["message"], expected);
    }
    stop(shutdown, vec![bridge]).await;
}

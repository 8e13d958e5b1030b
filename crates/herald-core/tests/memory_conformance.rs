//! `MemoryLayer` against the shared layer conformance suite.

use herald_core::MemoryLayer;
use herald_core::memory::MemoryLayerConfig;

#[tokio::test]
async fn memory_layer_conforms() {
    herald_testkit::conformance::run_all(|history| async move {
        MemoryLayer::new(MemoryLayerConfig {
            history,
            incoming_capacity: 1024,
            ..MemoryLayerConfig::default()
        })
    })
    .await;
}

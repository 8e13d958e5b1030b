//! `NodeLayer`: the layer chosen by configuration, as one concrete type.
//!
//! An enum rather than `dyn Layer` (the trait's async methods are not object-safe) or a
//! generic server (which would thread a type parameter through every module).

use herald_core::memory::MemoryLayerConfig;
use herald_core::{
    GroupName, History, HistoryConfig, Incoming, Layer, LayerError, MemoryLayer, Payload, Position,
};

use crate::config::{Config, LayerKind};

/// The layer this node runs on.
#[derive(Clone, Debug)]
pub enum NodeLayer {
    /// One process.
    Memory(MemoryLayer),
}

impl NodeLayer {
    /// Builds the layer `config` asks for.
    pub fn from_config(config: &Config) -> Result<(Self, Incoming), String> {
        let history = HistoryConfig {
            max_len: config.history.size,
            max_age: config.history.ttl,
        };
        match config.layer.kind {
            LayerKind::Memory => {
                let (layer, incoming) = MemoryLayer::new(MemoryLayerConfig {
                    history,
                    ..MemoryLayerConfig::default()
                });
                Ok((Self::Memory(layer), incoming))
            }
            LayerKind::Redis => Err("the redis layer is not part of this build".into()),
        }
    }
}

impl Layer for NodeLayer {
    async fn publish(&self, group: &GroupName, payload: Payload) -> Result<Position, LayerError> {
        match self {
            Self::Memory(l) => l.publish(group, payload).await,
        }
    }

    async fn publish_batch(
        &self,
        items: Vec<(GroupName, Payload)>,
    ) -> Result<Vec<Position>, (usize, LayerError)> {
        match self {
            Self::Memory(l) => l.publish_batch(items).await,
        }
    }

    async fn subscribe(&self, group: &GroupName) -> Result<(), LayerError> {
        match self {
            Self::Memory(l) => l.subscribe(group).await,
        }
    }

    async fn unsubscribe(&self, group: &GroupName) -> Result<(), LayerError> {
        match self {
            Self::Memory(l) => l.unsubscribe(group).await,
        }
    }

    async fn history(
        &self,
        group: &GroupName,
        since: Option<&Position>,
    ) -> Result<History, LayerError> {
        match self {
            Self::Memory(l) => l.history(group, since).await,
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Self::Memory(l) => l.is_ready(),
        }
    }
}

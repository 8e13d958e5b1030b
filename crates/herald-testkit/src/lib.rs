//! Test support for herald, used only from `tests/` directories: real `redis-server`
//! processes (single or a Sentinel set) on free ports, the layer conformance suite, and WebSocket test clients.

pub mod cluster;
pub mod conformance;
pub mod redis;
pub mod sentinel;
pub mod ws;

//! chainmesh integration tests: one crate, one binary, a module per area. Every test
//! runs the real node binary as child processes on 127.0.0.1.

mod censor;
mod chains;
mod common;
mod crash;
mod dashboard;
mod dev_node;
mod devnet;
mod exhaustion;
mod floods;
mod forks;
mod fuzz;
mod gossip;
mod hostile;
mod interop;
mod nat;
mod netns;
mod partition;
mod scores;
mod soak;
mod sync;

//! IO-free scheduling state machines. Time is passed in as [`std::time::Instant`] values so
//! tests can simulate it.

mod connstate;
mod linkclock;
mod superseed;
mod swarm;
mod upload;

pub use connstate::{ConnLimits, ConnRefusal, ConnState, SlotDecision, slot_decision};
pub use linkclock::{LinkClock, LinkLimits};
pub use superseed::{Reveal, RevealOrder, SuperSeeder};
pub use swarm::{Action, LinkId, Misbehaviour, PiecePolicy, Swarm, SwarmConfig, SwarmStats};
pub use upload::{QueuedUpload, UploadQueue, UploadQueueError};

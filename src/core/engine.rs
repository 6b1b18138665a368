//! Placeholder: the engine is being written.
pub struct Core;

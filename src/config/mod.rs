//! Configuration: the typed model, loading from YAML or TOML, validation with
//! file:line:col errors, and compilation into a [`Snapshot`].
//!
//! ```text
//! file ──load──▶ model ──compile (checks as it builds)──▶ Snapshot
//! ```

pub mod compile;
pub mod diagnostics;
pub mod load;
pub mod locate;
pub mod model;
pub mod snapshot;
pub mod units;

pub use diagnostics::{ConfigError, ConfigErrors};
pub use snapshot::Snapshot;

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

/// `p` as the configuration means it: relative paths are relative to the
/// directory of the file (`base`), not to the working directory.
pub fn resolve_path(base: &std::path::Path, p: &std::path::Path) -> std::path::PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

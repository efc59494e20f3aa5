//! Configuration as the user writes it: the typed model, loading from YAML
//! or TOML, and errors at file:line:col. Imports nothing else from the crate;
//! [`crate::compile`] turns the model into a snapshot.
//!
//! ```text
//! file ──load──▶ model ──compile (checks as it builds)──▶ Snapshot
//! ```

pub mod diagnostics;
pub mod load;
pub mod locate;
pub mod model;
pub mod units;

pub use diagnostics::{ConfigError, ConfigErrors};

/// `p` as the configuration means it: relative paths are relative to the
/// directory of the file (`base`), not to the working directory.
pub fn resolve_path(base: &std::path::Path, p: &std::path::Path) -> std::path::PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

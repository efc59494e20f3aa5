//! The assembled product: the server with the admin API, as `portcullis
//! run`, the demo and the tests start it.

use std::path::PathBuf;

pub use crate::server::{Gateway, StartError};
use crate::upstream::dns::ResolveFn;

/// Loads `config_path`, binds every listener and the admin listener, and
/// starts serving.
pub async fn start(config_path: PathBuf) -> Result<Gateway, StartError> {
    Gateway::start(config_path, crate::admin::serve).await
}

/// As [`start`], resolving target names with `resolve` instead of the
/// system resolver (for embedding with another service discovery).
pub async fn start_with_resolver(
    config_path: PathBuf,
    resolve: ResolveFn,
) -> Result<Gateway, StartError> {
    Gateway::start_with_resolver(config_path, resolve, crate::admin::serve).await
}

//! Reading a configuration file (YAML or TOML) into the typed model.
//!
//! Parse errors from either format come back as [`ConfigErrors`] with the
//! file, line and column, and a did-you-mean hint for misspelled keys.

use std::path::Path;

use super::diagnostics::{ConfigError, ConfigErrors};
use super::locate::{self, Format, SourceMap};
use super::model::Config;

/// A parsed configuration and what is needed to point at its lines later.
pub struct Loaded {
    /// The typed model.
    pub config: Config,
    /// Node positions, for errors found after parsing.
    pub source: Option<SourceMap>,
    /// The file's bytes, for the config hash.
    pub text: String,
}

/// Reads and parses `path`, choosing the format from its extension.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigErrors> {
    let format = Format::from_path(path).ok_or_else(|| {
        ConfigErrors::whole_file(
            path,
            "unknown configuration format".into(),
            Some("name the file .yaml, .yml or .toml".into()),
        )
    })?;
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::whole_file(
            path,
            format!("cannot read the configuration file: {e}"),
            Some("check the path given with -c and the file's permissions".into()),
        )
    })?;
    let config = parse(path, &text, format)?;
    let source = SourceMap::parse(&text, format);
    Ok(Loaded {
        config,
        source,
        text,
    })
}

/// Parses `text` (whose origin is `path`, for messages) in `format`.
pub fn parse(path: &Path, text: &str, format: Format) -> Result<Config, ConfigErrors> {
    let (message, line, column) = match format {
        Format::Yaml => match serde_saphyr::from_str::<Config>(text) {
            Ok(config) => return Ok(config),
            Err(e) => {
                let (line, column) = e
                    .location()
                    .map(|l| (l.line() as u32, l.column() as u32))
                    .unwrap_or((1, 1));
                // The plain message, without the source snippet the crate
                // adds and without its trailing location (we print ours).
                let text = e.without_snippet().to_string();
                let text = match text.rfind(" at line ") {
                    Some(i) => text[..i].to_string(),
                    None => text,
                };
                (text, line, column)
            }
        },
        Format::Toml => match toml::from_str::<Config>(text) {
            Ok(config) => return Ok(config),
            Err(e) => {
                let pos = e
                    .span()
                    .map(|s| locate::position_of_offset(text, s.start))
                    .unwrap_or(locate::Position { line: 1, column: 1 });
                (e.message().to_string(), pos.line, pos.column)
            }
        },
    };
    Err(ConfigErrors(vec![syntax_error(
        path, &message, line, column,
    )]))
}

/// Turns a parser message into an error with a hint: did-you-mean for unknown
/// keys and values, the expected choices otherwise.
fn syntax_error(path: &Path, message: &str, line: u32, column: u32) -> ConfigError {
    let first_line = message.lines().next().unwrap_or(message).trim().to_string();
    let hint = locate::parse_unknown(message)
        .map(|(word, expected)| {
            match locate::did_you_mean(&word, expected.iter().map(String::as_str)) {
                Some(close) => format!("did you mean `{close}`?"),
                None if expected.is_empty() => "remove it".to_string(),
                None => format!("expected one of: {}", expected.join(", ")),
            }
        })
        // `check` promises a hint with every error, so messages that name no
        // alternatives still say where to look.
        .or_else(|| Some(fallback_hint(&first_line)));
    ConfigError {
        file: path.to_path_buf(),
        line,
        column,
        message: first_line,
        hint,
    }
}

/// A hint for parser messages that offer no alternatives: the field to add,
/// or where a syntax mistake usually hides.
fn fallback_hint(message: &str) -> String {
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field)
    {
        return format!("add `{field}` to this entry");
    }
    if message.starts_with("invalid") {
        return "check this value's type and format in docs/configuration.md".to_string();
    }
    "check the syntax here and on the line before: indentation, quotes and brackets".to_string()
}

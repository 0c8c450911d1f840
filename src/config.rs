//! Settings, layered: `config/default.toml` (compiled in) → the file named by
//! `--config` or `ALLOT_CONFIG` → `ALLOT_*` environment variables → the
//! command line's options ([`Overrides`]).
//!
//! A file is written by the operator for allot alone, so an unknown key in it
//! is a mistake and stops the start. The environment is shared with the
//! platform, which sets `ALLOT_*` variables of its own (a Kubernetes Service
//! named `allot` gives every pod `ALLOT_PORT`, `ALLOT_SERVICE_HOST`, …), so an
//! unknown variable is ignored and reported, with a hint when it looks like a
//! typo of a real one.

use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Provider};
use serde::{Deserialize, Serialize};

use crate::store::PoolOptions;

/// The defaults file, every key commented.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Every field must appear in `config/default.toml`: the environment layer
/// learns which `ALLOT_*` variables are settings from that file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub listen: String,
    /// Empty selects the embedded SQLite store under `data_dir`.
    pub database_url: String,
    pub data_dir: PathBuf,
    pub run_migrations: bool,
    pub body_limit_bytes: usize,
    pub shutdown_timeout_secs: u64,
    pub refresh_interval_ms: u64,
    /// `/readyz` turns 503 once the configuration could not be confirmed
    /// current for longer than this; 0 = never.
    pub readiness_max_config_age_secs: u64,
    pub sweep_interval_ms: u64,
    /// How often buffered exposures are written to the ledger (§8).
    pub exposure_flush_ms: u64,
    /// Exposures buffered between flushes; more are dropped and counted.
    pub exposure_buffer: usize,
    /// Units each generation of the recorded-units cache remembers.
    pub exposure_cache: usize,
    /// A replica whose checkpoint of buffered exposures is older than this
    /// is taken for dead, and what it held is counted as dropped.
    pub exposure_lease_ms: u64,
    pub db_max_connections: u32,
    pub db_acquire_timeout_ms: u64,
    pub log_format: LogFormat,
    pub log_level: String,
    /// A request still running after this long answers 503.
    pub request_timeout_ms: u64,
    /// A connection that has not sent a complete request head this long after
    /// it opened (or after its previous response) is closed.
    pub header_read_timeout_ms: u64,
    pub auth: AuthSettings,
}

/// Bearer-token authentication (§1). No token: auth is off.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Serve `/metrics` without a token even when auth is on.
    #[serde(default)]
    pub metrics_public: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May call everything.
    Admin,
    /// May evaluate, assign, route and register participants, and read.
    Client,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Recorded as the actor of the versions this token writes.
    pub name: String,
    pub role: Role,
    pub token: String,
}

/// Tokens never appear in logs or debug output.
impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Parses `ALLOT_TOKENS`: `name:role:token,name:role:token`.
pub fn parse_tokens(raw: &str) -> Result<Vec<TokenConfig>, ConfigError> {
    raw.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let mut parts = entry.splitn(3, ':');
            let (Some(name), Some(role), Some(token)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(ConfigError::Invalid(
                    "ALLOT_TOKENS entries must look like name:role:token".into(),
                ));
            };
            let role = match role {
                "admin" => Role::Admin,
                "client" => Role::Client,
                other => {
                    return Err(ConfigError::Invalid(format!(
                        "ALLOT_TOKENS: token {name:?} has role {other:?}; use admin or client"
                    )))
                }
            };
            Ok(TokenConfig {
                name: name.to_owned(),
                role,
                token: token.to_owned(),
            })
        })
        .collect()
}

/// Settings given on the command line. Each one given wins over the file
/// and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// The settings file, instead of the one `ALLOT_CONFIG` names.
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `by`: what named the file (`--config` or `ALLOT_CONFIG`).
    #[error("{by} names {path}, which does not exist")]
    MissingFile { by: &'static str, path: PathBuf },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Environment variables with this prefix configure allot.
const ENV_PREFIX: &str = "ALLOT_";

/// `ALLOT_*` variables read directly rather than as settings.
const ENV_EXTRAS: [&str; 2] = ["config", "tokens"];

/// `ALLOT_*` environment variables that name no setting. They were ignored;
/// [`Settings::load`] hands them back instead of printing them, so that they
/// are reported through the logger once it is set up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IgnoredEnv {
    /// Each variable's name, and the variable it probably meant, if any.
    pub variables: Vec<(String, Option<String>)>,
}

impl IgnoredEnv {
    pub fn is_empty(&self) -> bool {
        self.variables.is_empty()
    }

    /// `ALLOT_PORT, ALLOT_LISTN (did you mean ALLOT_LISTEN?)`.
    pub fn describe(&self) -> String {
        self.variables
            .iter()
            .map(|(name, hint)| match hint {
                Some(hint) => format!("{name} (did you mean {hint}?)"),
                None => name.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The key path of every setting (`listen`, `auth.metrics_public`) and of
/// every table (`auth`, which an `ALLOT_AUTH={...}` value can set whole),
/// with its default. Read from the defaults file, which holds every key.
fn default_values() -> Vec<(String, Value)> {
    fn walk(prefix: &str, dict: &Dict, out: &mut Vec<(String, Value)>) {
        for (key, value) in dict {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if let Value::Dict(_, inner) = value {
                walk(&path, inner, out);
            }
            out.push((path, value.clone()));
        }
    }
    let mut out = Vec::new();
    if let Ok(profiles) = Figment::from(Toml::string(DEFAULTS)).data() {
        for dict in profiles.values() {
            walk("", dict, &mut out);
        }
    }
    out
}

/// The key paths of [`default_values`].
fn setting_paths() -> Vec<String> {
    default_values().into_iter().map(|(path, _)| path).collect()
}

/// The environment variable that sets the setting at `path`
/// (`auth.metrics_public` → `ALLOT_AUTH__METRICS_PUBLIC`).
fn env_name(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.replace('.', "__").to_ascii_uppercase()
    )
}

/// Every environment variable allot reads, with its default: the text that
/// ends `allot --help`. Built from the defaults file, so it names every
/// setting there is and the defaults in effect.
pub fn environment_help() -> String {
    let defaults = Settings::defaults().ok();
    let mut rows: Vec<(String, String)> = vec![(
        "ALLOT_CONFIG".into(),
        "a TOML file of settings [none]".into(),
    )];
    let mut settings: Vec<(String, String)> = default_values()
        .into_iter()
        .filter(|(_, value)| !matches!(value, Value::Dict(..)))
        .map(|(path, value)| {
            let shown = match (path.as_str(), &value) {
                ("database_url", _) => match &defaults {
                    Some(d) => format!("[empty, meaning {}]", d.database_url()),
                    None => "[empty]".into(),
                },
                ("auth.tokens", _) => "[none; ALLOT_TOKENS is simpler]".into(),
                (_, Value::String(_, text)) => format!("[{text}]"),
                (_, other) => match serde_json::to_string(other) {
                    Ok(json) => format!("[{json}]"),
                    Err(_) => String::new(),
                },
            };
            (env_name(&path), shown)
        })
        .collect();
    settings.sort();
    rows.extend(settings);
    rows.push((
        "ALLOT_TOKENS".into(),
        "bearer tokens: name:role:token,... (admin or client) [none: auth off]".into(),
    ));
    rows.push((
        "RUST_LOG".into(),
        "a log filter that wins over ALLOT_LOG_LEVEL".into(),
    ));
    rows.push((
        "NO_COLOR".into(),
        "set: no colour in pretty logs, even on a terminal".into(),
    ));
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0) + 2;
    let mut text = String::from(
        "Settings, lowest precedence first: the built-in defaults (config/default.toml\n\
         explains each), the TOML file named by --config or ALLOT_CONFIG, ALLOT_*\n\
         environment variables (ALLOT_AUTH__METRICS_PUBLIC sets auth.metrics_public),\n\
         then the options above.\n\
         \n\
         Environment variables [default]:\n",
    );
    for (name, shown) in rows {
        text.push_str(&format!("  {name:width$}{shown}\n"));
    }
    text
}

/// Whether `path` (as the environment provider derives it from a variable
/// name) is a setting. Keys compare without case, as the provider's do.
fn is_setting(paths: &[String], path: &str) -> bool {
    let path = path.trim();
    paths.iter().any(|p| p.eq_ignore_ascii_case(path))
}

/// What follows the prefix in a variable's name (matched without case, as
/// the environment provider matches it); `None` if it lacks the prefix.
fn env_suffix(name: &str) -> Option<&str> {
    let head = name.trim_start().get(..ENV_PREFIX.len())?;
    head.eq_ignore_ascii_case(ENV_PREFIX)
        .then(|| &name.trim_start()[ENV_PREFIX.len()..])
}

/// The `ALLOT_*` names among `names` that are neither a setting nor one of
/// [`ENV_EXTRAS`], each with the closest real variable when it is close
/// enough to be a typo of it.
fn unknown_env(names: impl IntoIterator<Item = String>, paths: &[String]) -> IgnoredEnv {
    let candidates: Vec<String> = paths
        .iter()
        .map(String::as_str)
        .chain(ENV_EXTRAS)
        .map(|path| path.replace('.', "__"))
        .collect();
    let mut variables: Vec<(String, Option<String>)> = names
        .into_iter()
        .filter_map(|name| {
            let suffix = env_suffix(&name)?.trim().to_ascii_lowercase();
            let known = is_setting(paths, &suffix.replace("__", "."))
                || ENV_EXTRAS.contains(&suffix.as_str());
            if known {
                return None;
            }
            // Close enough: at most two edits, and few for a short name, so
            // that `ALLOT_PORT` is not "corrected" into some unrelated key.
            let hint = candidates
                .iter()
                .map(|c| (strsim::damerau_levenshtein(&suffix, c), c))
                .filter(|(d, c)| *d <= 2 && d * 3 <= c.len())
                .min_by_key(|(d, _)| *d)
                .map(|(_, c)| format!("{ENV_PREFIX}{}", c.to_ascii_uppercase()));
            Some((name, hint))
        })
        .collect();
    variables.sort();
    IgnoredEnv { variables }
}

impl Settings {
    /// Reads the layers from the process environment, then applies the
    /// command line's `overrides`. `ALLOT_*` variables that name no setting
    /// are left out and handed back.
    pub fn load(overrides: &Overrides) -> Result<(Self, IgnoredEnv), ConfigError> {
        let paths = setting_paths();
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        let file = match &overrides.config {
            Some(path) => Some(("--config", path.clone())),
            None => std::env::var_os("ALLOT_CONFIG").map(|path| ("ALLOT_CONFIG", path.into())),
        };
        if let Some((by, path)) = file {
            if !path.is_file() {
                return Err(ConfigError::MissingFile { by, path });
            }
            figment = figment.merge(Toml::file(path));
        }
        let known = paths.clone();
        figment = figment.merge(
            Env::prefixed(ENV_PREFIX)
                .split("__")
                .filter(move |key| is_setting(&known, key.as_str())),
        );
        // Merged rather than assigned afterwards, so that a bad value that an
        // option replaces (ALLOT_LOG_FORMAT=jsn --log-format json) is no error.
        if let Some(listen) = &overrides.listen {
            figment = figment.merge(("listen", listen));
        }
        if let Some(url) = &overrides.database_url {
            figment = figment.merge(("database_url", url));
        }
        if let Some(format) = overrides.log_format {
            figment = figment.merge(("log_format", format));
        }
        let ignored = unknown_env(
            std::env::vars_os().map(|(name, _)| name.to_string_lossy().into_owned()),
            &paths,
        );
        let mut settings = Self::from_figment(figment)?;
        if let Ok(raw) = std::env::var("ALLOT_TOKENS") {
            settings.auth.tokens = parse_tokens(&raw)?;
        }
        settings.validate()?;
        Ok((settings, ignored))
    }

    /// The defaults alone (tests start from these).
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(DEFAULTS)))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Self = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.db_max_connections == 0 {
            return invalid("db_max_connections must be at least 1");
        }
        if self.refresh_interval_ms == 0 || self.sweep_interval_ms == 0 {
            return invalid("refresh_interval_ms and sweep_interval_ms must be at least 1");
        }
        if self.request_timeout_ms == 0 || self.header_read_timeout_ms == 0 {
            return invalid("request_timeout_ms and header_read_timeout_ms must be at least 1");
        }
        if self.exposure_flush_ms == 0 || self.exposure_buffer == 0 || self.exposure_cache == 0 {
            return invalid(
                "exposure_flush_ms, exposure_buffer and exposure_cache must be at least 1",
            );
        }
        // Four renewals per lease, checkpoints at most every 100 ms.
        if self.exposure_lease_ms < 400 {
            return invalid("exposure_lease_ms must be at least 400");
        }
        let tokens = &self.auth.tokens;
        for (i, t) in tokens.iter().enumerate() {
            if t.name.is_empty() || t.token.is_empty() {
                return invalid("every auth token needs a name and a token");
            }
            if tokens[..i]
                .iter()
                .any(|o| o.name == t.name || o.token == t.token)
            {
                return Err(ConfigError::Invalid(format!(
                    "auth token {:?} repeats another token's name or value",
                    t.name
                )));
            }
        }
        Ok(())
    }

    /// The exposure ledger's limits.
    pub fn ledger_options(&self) -> crate::engine::exposures::LedgerOptions {
        crate::engine::exposures::LedgerOptions {
            buffer: self.exposure_buffer,
            cache: self.exposure_cache,
            lease: std::time::Duration::from_millis(self.exposure_lease_ms),
        }
    }

    /// The database URL in effect: the configured one, or the embedded file.
    pub fn database_url(&self) -> String {
        if self.database_url.trim().is_empty() {
            format!("sqlite://{}", self.data_dir.join("allot.db").display())
        } else {
            self.database_url.clone()
        }
    }

    /// The database URL without its password, for logs.
    pub fn redacted_database_url(&self) -> String {
        let url = self.database_url();
        match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let credentials = &url[scheme + 3..at];
                match credentials.split_once(':') {
                    Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                    None => url,
                }
            }
            _ => url,
        }
    }

    pub fn pool_options(&self) -> PoolOptions {
        PoolOptions {
            max_connections: self.db_max_connections,
            acquire_timeout: Duration::from_millis(self.db_acquire_timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_select_the_embedded_store() {
        let s = Settings::defaults().unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080");
        assert!(s.database_url().starts_with("sqlite://"));
    }

    #[test]
    fn tokens_parse_from_the_environment_form_and_never_print() {
        let tokens = parse_tokens("ci:client:abc123, ops:admin:s3cr:et").unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            (
                tokens[1].name.as_str(),
                tokens[1].role,
                tokens[1].token.as_str()
            ),
            ("ops", Role::Admin, "s3cr:et")
        );
        assert!(!format!("{tokens:?}").contains("abc123"));
        assert!(parse_tokens("ci:root:x").is_err());
        assert!(parse_tokens("nocolons").is_err());
    }

    fn ignored(names: &[&str]) -> Vec<(String, Option<String>)> {
        unknown_env(names.iter().map(|n| (*n).to_owned()), &setting_paths()).variables
    }

    #[test]
    fn kubernetes_service_variables_are_ignored_without_hints() {
        assert_eq!(
            ignored(&[
                "ALLOT_PORT",
                "ALLOT_SERVICE_HOST",
                "ALLOT_SERVICE_PORT",
                "ALLOT_PORT_8080_TCP",
                "ALLOT_PORT_8080_TCP_ADDR",
                "HOME",
            ]),
            [
                "ALLOT_PORT",
                "ALLOT_PORT_8080_TCP",
                "ALLOT_PORT_8080_TCP_ADDR",
                "ALLOT_SERVICE_HOST",
                "ALLOT_SERVICE_PORT",
            ]
            .map(|n| (n.to_owned(), None))
        );
    }

    #[test]
    fn every_setting_and_the_directly_read_variables_are_known() {
        assert!(ignored(&[
            "ALLOT_LISTEN",
            "ALLOT_DATABASE_URL",
            "ALLOT_REQUEST_TIMEOUT_MS",
            "ALLOT_HEADER_READ_TIMEOUT_MS",
            "ALLOT_AUTH",
            "ALLOT_AUTH__METRICS_PUBLIC",
            "ALLOT_AUTH__TOKENS",
            "allot_log_level",
            "ALLOT_CONFIG",
            "ALLOT_TOKENS",
        ])
        .is_empty());
    }

    #[test]
    fn a_likely_typo_names_the_variable_it_meant() {
        let hint = |name: &str| ignored(&[name]).pop().and_then(|(_, hint)| hint);
        assert_eq!(hint("ALLOT_LISTN").as_deref(), Some("ALLOT_LISTEN"));
        assert_eq!(hint("ALLOT_LSITEN").as_deref(), Some("ALLOT_LISTEN"));
        assert_eq!(
            hint("ALLOT_AUTH_METRICS_PUBLIC").as_deref(),
            Some("ALLOT_AUTH__METRICS_PUBLIC")
        );
        assert_eq!(hint("ALLOT_TOKEN").as_deref(), Some("ALLOT_TOKENS"));
        assert_eq!(hint("ALLOT_WHATEVER"), None);
        assert_eq!(
            IgnoredEnv {
                variables: ignored(&["ALLOT_PORT", "ALLOT_LISTN"])
            }
            .describe(),
            "ALLOT_LISTN (did you mean ALLOT_LISTEN?), ALLOT_PORT"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        let mut s = Settings::defaults().unwrap();
        s.database_url = "postgres://allot:s3cret@db:5432/allot".into();
        assert_eq!(
            s.redacted_database_url(),
            "postgres://allot:***@db:5432/allot"
        );
    }
}

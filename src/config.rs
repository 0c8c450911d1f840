//! Settings, layered: `config/default.toml` (compiled in) → the file named by
//! `ALLOT_CONFIG` → `ALLOT_*` environment variables.

use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::store::PoolOptions;

/// The defaults file, every key commented.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

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
    pub sweep_interval_ms: u64,
    pub db_max_connections: u32,
    pub db_acquire_timeout_ms: u64,
    pub log_format: LogFormat,
    pub log_level: String,
    /// A request still running after this long answers 503.
    pub request_timeout_ms: u64,
    pub auth: AuthSettings,
}

/// Bearer-token authentication (contract §1). No token: auth is off.
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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("ALLOT_CONFIG names {0}, which does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Reads the three layers from the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = std::env::var_os("ALLOT_CONFIG") {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(
            Env::prefixed("ALLOT_")
                .ignore(&["config", "tokens"])
                .split("__"),
        );
        let mut settings = Self::from_figment(figment)?;
        if let Ok(raw) = std::env::var("ALLOT_TOKENS") {
            settings.auth.tokens = parse_tokens(&raw)?;
        }
        settings.validate()?;
        Ok(settings)
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
        if self.request_timeout_ms == 0 {
            return invalid("request_timeout_ms must be at least 1");
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

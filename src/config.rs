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
        figment = figment.merge(Env::prefixed("ALLOT_").ignore(&["config"]));
        Self::from_figment(figment)
    }

    /// The defaults alone (tests start from these).
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(DEFAULTS)))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let settings: Self = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if settings.db_max_connections == 0 {
            return Err(ConfigError::Invalid(
                "db_max_connections must be at least 1".into(),
            ));
        }
        if settings.refresh_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "refresh_interval_ms must be at least 1".into(),
            ));
        }
        Ok(settings)
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
    fn passwords_are_redacted() {
        let mut s = Settings::defaults().unwrap();
        s.database_url = "postgres://allot:s3cret@db:5432/allot".into();
        assert_eq!(
            s.redacted_database_url(),
            "postgres://allot:***@db:5432/allot"
        );
    }
}

//! Where things live and how big the pools are: flags, then environment, then
//! `plexus.toml` (in the working directory, else the user's config directory).

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub pools: BTreeMap<String, u32>,
    /// `false` trades durability on power loss for speed (SQLite synchronous=NORMAL).
    pub fsync: Option<bool>,
}

pub fn config_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("plexus"))
}

/// The user's data directory for Plexus: `$XDG_DATA_HOME/plexus` or `~/.local/share/plexus`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("plexus")
}

pub fn load_file_config(explicit: Option<&Path>) -> Result<(FileConfig, Option<PathBuf>)> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p.to_path_buf()],
        None => [
            Some(PathBuf::from("plexus.toml")),
            config_dir().map(|d| d.join("plexus.toml")),
        ]
        .into_iter()
        .flatten()
        .collect(),
    };
    for path in candidates {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let cfg: FileConfig = toml::from_str(&text)
                    .with_context(|| format!("{} is not a valid plexus.toml", path.display()))?;
                return Ok((cfg, Some(path)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    Ok((FileConfig::default(), None))
}

pub struct Settings {
    pub data_dir: PathBuf,
    pub pools: BTreeMap<String, u32>,
    pub fsync: bool,
}

pub fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Parses `name=N` pool flags.
pub fn parse_pool_flag(s: &str) -> Result<(String, u32)> {
    let (name, n) = s
        .split_once('=')
        .with_context(|| format!("`--pool {s}`: write NAME=SLOTS, e.g. --pool gpu=1"))?;
    let n: u32 = n
        .trim()
        .parse()
        .with_context(|| format!("`--pool {s}`: SLOTS must be a positive number"))?;
    if n == 0 {
        bail!("`--pool {s}`: a pool needs at least one slot");
    }
    Ok((name.trim().to_owned(), n))
}

pub fn resolve(
    data_dir_flag: Option<PathBuf>,
    pool_flags: &[String],
    config_file: Option<&Path>,
) -> Result<Settings> {
    let (file, _) = load_file_config(config_file)?;
    let data_dir = data_dir_flag
        .or(file.data_dir)
        .unwrap_or_else(default_data_dir);
    let mut pools = BTreeMap::from([("default".to_owned(), cores())]);
    pools.extend(file.pools);
    for flag in pool_flags {
        let (name, n) = parse_pool_flag(flag)?;
        pools.insert(name, n);
    }
    Ok(Settings {
        data_dir,
        pools,
        fsync: file.fsync.unwrap_or(true),
    })
}

impl Settings {
    pub fn open_store(&self) -> Result<std::sync::Arc<plexus_store::SqliteStore>> {
        std::fs::create_dir_all(&self.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                self.data_dir.display()
            )
        })?;
        let path = self.data_dir.join("plexus.db");
        let store = plexus_store::SqliteStore::open(
            &path,
            plexus_store::SqliteOptions {
                synchronous_full: self.fsync,
            },
        )
        .with_context(|| format!("cannot open the store {}", path.display()))?;
        Ok(std::sync::Arc::new(store))
    }
}

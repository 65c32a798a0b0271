//! The last applied configuration on local disk, so that a replica never falls back to its file's resources.
//!
//! With a config topic, the topic is the configuration: consumers and keys the file still lists may have been
//! revoked there. A replica that starts while the broker is unreachable therefore must not serve the file's
//! resources. Each time it applies a configuration it writes the resources and their version here —
//! `config-cache.json` in the replica's own spool directory, written to a temporary file, fsynced and renamed
//! over the old one, so a crash leaves the old or the new one whole — and a start that cannot read the topic in
//! time serves the last configuration it applied instead, until the topic is read. Without this file (a first
//! start during an outage) it serves nothing until the topic is read. The file holds what the topic holds —
//! consumer keys as SHA-256 hashes, provider keys as variable names — never a secret; it is created mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_schemas::config::ResourceKind;

use super::resources::ResourceSet;

/// The file's name in the spool directory.
pub const FILE_NAME: &str = "config-cache.json";

/// The cache of one replica.
#[derive(Debug, Clone)]
pub struct ConfigCache {
    path: PathBuf,
    topic: String,
}

/// What the file holds.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    /// The config topic it was read from: a cache of another topic is not this configuration.
    topic: String,
    /// The topic offset of the last change applied.
    version: i64,
    resources: Vec<StoredResource>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredResource {
    kind: ResourceKind,
    id: String,
    resource: Value,
}

/// The configuration read back from the cache.
#[derive(Debug)]
pub struct Cached {
    pub set: ResourceSet,
    pub version: i64,
}

impl ConfigCache {
    pub fn new(dir: &Path, topic: &str) -> Self {
        Self {
            path: dir.join(FILE_NAME),
            topic: topic.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file with `set` at `version`.
    pub fn store(&self, set: &ResourceSet, version: i64) -> std::io::Result<()> {
        let stored = Stored {
            topic: self.topic.clone(),
            version,
            resources: set
                .iter()
                .map(|(kind, id, resource)| StoredResource {
                    kind,
                    id: id.to_owned(),
                    resource: resource.clone(),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(std::io::Error::other)?;
        let dir = self.path.parent().unwrap_or_else(|| Path::new("."));
        let temporary = self.path.with_extension("json.tmp");
        {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&temporary, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// The last configuration stored for this topic; `Ok(None)` when there is none.
    pub fn load(&self) -> Result<Option<Cached>, String> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        let stored: Stored = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not a configuration cache: {e}", self.path.display()))?;
        if stored.topic != self.topic {
            return Err(format!(
                "{}: a cache of config topic `{}`, not `{}`",
                self.path.display(),
                stored.topic,
                self.topic
            ));
        }
        let mut set = ResourceSet::default();
        for item in stored.resources {
            set.put(item.kind, &item.id, item.resource);
        }
        Ok(Some(Cached {
            set,
            version: stored.version,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tollgate-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn what_was_stored_comes_back_and_only_for_its_own_topic() {
        let dir = scratch("roundtrip");
        let cache = ConfigCache::new(&dir, "tollgate.config.v1");
        assert!(cache.load().unwrap().is_none());
        let mut set = ResourceSet::default();
        set.put(ResourceKind::Route, "chat", json!({"name": "chat"}));
        set.put(ResourceKind::Consumer, "a", json!({"name": "a", "keys": []}));
        cache.store(&set, 41).unwrap();
        set.remove(ResourceKind::Consumer, "a");
        cache.store(&set, 42).unwrap();
        let cached = cache.load().unwrap().unwrap();
        assert_eq!(cached.version, 42);
        assert_eq!(cached.set, set);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(cache.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "readable by others: {mode:o}");
        }
        let other = ConfigCache::new(&dir, "another.topic");
        assert!(other.load().is_err());
        std::fs::write(cache.path(), b"{not json").unwrap();
        assert!(cache.load().is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! The result cache: a finished search (or pre-flight check) is stored under the user's
//! cache directory (or `$MAXBATCH_CACHE`), keyed by everything that decides its answer,
//! so asking again costs nothing. A corrupt or foreign file is ignored with a warning and
//! rewritten; the cache never makes a run fail.

use std::hash::Hasher;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Everything that decides a cached answer. Two runs with equal keys get the same answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheKey {
    /// "search", or "check N" for a pre-flight check at batch size N.
    pub kind: String,
    /// The model: a preset's or config's full shape, or the caller's own key.
    pub model: String,
    /// Weights' dtype, e.g. "f32".
    pub dtype: String,
    /// One sample's input shape, e.g. "512 tokens".
    pub input: String,
    /// The device, e.g. "cpu" or "cuda:0".
    pub device: String,
    /// The device's total memory (CUDA) or the CPU budget, in bytes.
    pub memory_bytes: u64,
    /// The capacity the trials ran against, in bytes: the CPU budget, or a CUDA device's
    /// `--memory` cap (`None`: the device's own memory, which `memory_bytes` names).
    #[serde(default)]
    pub capacity_bytes: Option<u64>,
    /// The search's settings that decide the trials (strategy, start, the cap it ran under,
    /// margin, steps per trial, optimizer, accumulation plan). The dataset size, epochs and
    /// drop-last only change the schedule arithmetic: they are not in the key, and a cached
    /// report's schedule is recomputed for the settings asked.
    pub settings: crate::settings::SearchSettings,
    /// maxbatch's version: a new version measures afresh.
    pub version: String,
}

impl CacheKey {
    /// The file name: a hash of the key's JSON that does not change between Rust releases
    /// (FNV-1a; std's `DefaultHasher` may). A collision is only a miss: the file holds the
    /// whole key, and [`Cache::load`] compares it.
    fn file_name(&self) -> String {
        let mut hasher = fnv::FnvHasher::default();
        hasher.write(serde_json::to_string(self).unwrap_or_default().as_bytes());
        format!("{:016x}.json", hasher.finish())
    }
}

#[derive(Serialize, Deserialize)]
struct Entry<T> {
    key: CacheKey,
    value: T,
}

/// A folder of cached answers.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache at `$MAXBATCH_CACHE`, else the user's cache directory's `maxbatch`
    /// folder (`~/.cache/maxbatch` on Linux). `None` when there is neither.
    pub fn default_location() -> Option<Self> {
        std::env::var_os("MAXBATCH_CACHE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|d| d.join("maxbatch")))
            .map(Self::at)
    }

    /// The cache in `dir` (created when something is first stored).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file that holds the answer for `key`.
    pub fn path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// The stored answer for `key`, if there is a readable one. A file that cannot be read
    /// as an answer for exactly this key is ignored with a warning.
    pub fn load<T: DeserializeOwned>(&self, key: &CacheKey) -> Option<T> {
        let path = self.path(key);
        let text = std::fs::read_to_string(&path).ok()?;
        match serde_json::from_str::<Entry<T>>(&text) {
            Ok(entry) if entry.key == *key => Some(entry.value),
            Ok(_) => None, // another key with the same hash: a miss
            Err(error) => {
                tracing::warn!(
                    "ignoring the corrupt cache file {} ({error}); it will be rewritten",
                    path.display()
                );
                None
            }
        }
    }

    /// Stores `value` as the answer for `key`. Failing to write is a warning, not an error.
    pub fn store<T: Serialize>(&self, key: &CacheKey, value: &T) {
        if let Some(file) = self.not_a_folder() {
            tracing::warn!(
                "the cache folder {} is not a folder ({} is a file), so this answer is not \
                 cached; set MAXBATCH_CACHE to a folder, or leave it unset",
                self.dir.display(),
                file.display()
            );
            return;
        }
        let path = self.path(key);
        if let Err(error) = write_atomically(&self.dir, &path, key, value) {
            tracing::warn!("could not write the cache file {}: {error}", path.display());
        }
    }
}

impl Cache {
    /// The path in the way when the cache's folder, or a folder above it, is a file
    /// (`MAXBATCH_CACHE=/dev/null`, say): nothing can be stored there.
    fn not_a_folder(&self) -> Option<PathBuf> {
        let existing = self.dir.ancestors().find(|p| p.exists())?;
        (!existing.is_dir()).then(|| existing.to_path_buf())
    }
}

/// An answer that can be cached: a complete one (a search stopped early is not).
pub trait Cacheable: Serialize + DeserializeOwned {
    /// False for an answer that must not be stored.
    fn complete(&self) -> bool {
        true
    }

    /// A stored answer, fitted to the settings of the run that asked for it (a report's
    /// schedule depends on the dataset, which the key leaves out).
    fn answered_from_cache(self, _settings: &crate::settings::SearchSettings) -> Self {
        self
    }
}

/// How a run uses the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheUse {
    /// Answer from the cache when it can; store a new answer.
    #[default]
    Answer,
    /// Measure again and store the new answer over the old one (`--no-cache`).
    Refresh,
}

/// The answer from `cache` for `key` when it has one (and `true`), else `run`'s answer,
/// stored for next time when it is complete (and `false`). With [`CacheUse::Refresh`] the
/// stored answer is not read, only replaced. Without a cache, `run`'s answer.
pub fn answer_or_run<T, E>(
    cache: Option<(&Cache, &CacheKey)>,
    mode: CacheUse,
    run: impl FnOnce() -> Result<T, E>,
) -> Result<(T, bool), E>
where
    T: Cacheable,
{
    let stored = cache
        .filter(|_| mode == CacheUse::Answer)
        .and_then(|(cache, key)| cache.load(key));
    if let Some(value) = stored {
        return Ok((value, true));
    }
    let value = run()?;
    if let Some((cache, key)) = cache.filter(|_| value.complete()) {
        cache.store(key, &value);
    }
    Ok((value, false))
}

fn write_atomically<T: Serialize>(
    dir: &Path,
    path: &Path,
    key: &CacheKey,
    value: &T,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let entry = Entry {
        key: key.clone(),
        value,
    };
    let text = serde_json::to_string_pretty(&entry).map_err(std::io::Error::other)?;
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: &str) -> CacheKey {
        CacheKey {
            kind: kind.into(),
            model: "Gpt(GptConfig { .. })".into(),
            dtype: "f32".into(),
            input: "64 tokens".into(),
            device: "cpu".into(),
            memory_bytes: 1 << 30,
            capacity_bytes: Some(1 << 30),
            settings: crate::settings::SearchSettings::default(),
            version: "0.1.0".into(),
        }
    }

    fn temporary_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("maxbatch-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn an_answer_comes_back_for_its_key_only() {
        let cache = Cache::at(temporary_dir("roundtrip"));
        assert_eq!(cache.load::<u32>(&key("search")), None);
        cache.store(&key("search"), &42u32);
        assert_eq!(cache.load::<u32>(&key("search")), Some(42));
        assert_eq!(cache.load::<u32>(&key("check 4")), None);
        let mut other = key("search");
        other.memory_bytes += 1;
        assert_eq!(cache.load::<u32>(&other), None);
    }

    #[test]
    fn answer_or_run_runs_once_per_key() {
        let cache = Cache::at(temporary_dir("answer"));
        let mut runs = 0;
        let mut ask = || {
            answer_or_run(Some((&cache, &key("search"))), CacheUse::Answer, || {
                runs += 1;
                Ok::<_, ()>(7u32)
            })
        };
        assert_eq!(ask(), Ok((7, false)));
        assert_eq!(ask(), Ok((7, true)));
        assert_eq!(runs, 1);
        assert_eq!(
            answer_or_run(None, CacheUse::Answer, || Ok::<_, ()>(8u32)),
            Ok((8, false))
        );
    }

    impl Cacheable for u32 {}

    /// An answer that is complete when even.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Partial(u32);

    impl Cacheable for Partial {
        fn complete(&self) -> bool {
            self.0 % 2 == 0
        }
    }

    #[test]
    fn an_incomplete_answer_is_not_stored() {
        let cache = Cache::at(temporary_dir("partial"));
        let key = key("search");
        let ask = |n| {
            answer_or_run(Some((&cache, &key)), CacheUse::Answer, || {
                Ok::<_, ()>(Partial(n))
            })
        };
        assert_eq!(ask(1), Ok((Partial(1), false)));
        assert_eq!(
            ask(3),
            Ok((Partial(3), false)),
            "the interrupted answer was stored"
        );
        assert_eq!(ask(4), Ok((Partial(4), false)));
        assert_eq!(ask(5), Ok((Partial(4), true)));
    }

    #[test]
    fn a_refresh_measures_again_and_replaces_the_entry() {
        let cache = Cache::at(temporary_dir("refresh"));
        let key = key("search");
        let ask = |mode, n: u32| answer_or_run(Some((&cache, &key)), mode, || Ok::<_, ()>(n));
        assert_eq!(ask(CacheUse::Answer, 1), Ok((1, false)));
        assert_eq!(ask(CacheUse::Refresh, 2), Ok((2, false)));
        assert_eq!(ask(CacheUse::Answer, 3), Ok((2, true)));
    }

    #[test]
    fn file_names_do_not_depend_on_the_rust_release() {
        // FNV-1a of the key's JSON, pinned: a new compiler must not move every entry.
        let mut hasher = fnv::FnvHasher::default();
        hasher.write(b"a");
        assert_eq!(hasher.finish(), 0xaf63dc4c8601ec8c);
        assert_eq!(
            key("search").file_name().len(),
            "0123456789abcdef.json".len()
        );
        assert_ne!(key("search").file_name(), key("check 4").file_name());
    }

    #[test]
    fn a_corrupt_file_is_a_miss_and_is_rewritten() {
        let cache = Cache::at(temporary_dir("corrupt"));
        cache.store(&key("search"), &1u32);
        std::fs::write(cache.path(&key("search")), "{ not json").unwrap();
        assert_eq!(cache.load::<u32>(&key("search")), None);
        cache.store(&key("search"), &2u32);
        assert_eq!(cache.load::<u32>(&key("search")), Some(2));
    }

    #[test]
    fn an_unwritable_cache_is_only_a_warning() {
        let file = temporary_dir("file");
        std::fs::write(&file, "a file, not a folder").unwrap();
        let cache = Cache::at(&file);
        cache.store(&key("search"), &1u32); // must not panic
        assert_eq!(cache.load::<u32>(&key("search")), None);
        assert_eq!(cache.not_a_folder(), Some(file.clone()));
        assert_eq!(Cache::at(file.join("below")).not_a_folder(), Some(file));
        assert_eq!(Cache::at(temporary_dir("new")).not_a_folder(), None);
    }
}
#[cfg(test)]
mod report_roundtrip {
    #[test]
    fn a_report_survives_the_cache() {
        let report = crate::report::tests::fixture("cuda:0", 6, Some(5));
        let text = serde_json::to_string(&report).unwrap();
        let back: crate::report::Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report);
    }
}

//! The compiled-plugin cache: wasmtime's native code for a component, kept
//! on disk so restarts and swaps back load in milliseconds, not seconds.
//!
//! Loading an entry runs native code that wasmtime does not check again
//! (`Component::deserialize` is `unsafe`), so the cache only trusts what it
//! wrote itself:
//!
//! * The folder (`plugins.cache_dir`) is created mode 0700 and used only if
//!   it is a real directory (not a symbolic link) owned by the process's
//!   effective uid and not writable by group or others; otherwise CDRS warns
//!   once and compiles every plugin on each load.
//! * Each entry carries an HMAC-SHA256 ([RFC 2104]) under a per-installation
//!   key (the file `key` in the folder: 32 bytes from the OS's random
//!   source, created mode 0600, refused like the folder if anyone else owns
//!   it or may read or write it). The MAC covers the component's sha256, the
//!   engine's compatibility hash and the artifact's sha256, so an entry
//!   copied under another component's name, built by another engine
//!   configuration, altered, or written by anyone without the key fails it:
//!   CDRS warns naming the entry and compiles the component instead.
//! * Entries are written only for components the host accepted (linked and
//!   `init`-ed: [`Compiled::persist`]), each file through a temporary name
//!   and a rename, so a crash never leaves half an entry.
//!
//! Layout: `{dir}/{component sha256}-{engine hash, 16 hex}.cwasm` (the
//! artifact) and `.mac` (hex MAC) beside it, and `{dir}/key`.
//!
//! [RFC 2104]: https://www.rfc-editor.org/rfc/rfc2104
//! [`Compiled::persist`]: super::Compiled::persist

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use wasmtime::component::Component;
use wasmtime::Engine;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the per-installation MAC key.
const KEY_BYTES: usize = 32;

/// File name of the key inside the cache folder.
const KEY_FILE: &str = "key";

/// Prefix of every MAC input: names what is signed, so a MAC made for
/// something else under the same key never verifies here.
const MAC_DOMAIN: &[u8] = b"cdrs compiled plugin cache v1\0";

/// Why the cache folder or its key is not used, or an entry not written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The folder or key is not safe to trust: someone else could have
    /// written it.
    #[error("\"{path}\" {why}")]
    Unsafe { path: PathBuf, why: String },
    #[error("\"{path}\": {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to serialize the compiled component: {0:#}")]
    Serialize(wasmtime::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The process's effective uid: the owner of the files it creates.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail (POSIX).
    unsafe { libc::geteuid() }
}

/// Checks that `meta` (of `path`, not followed through a symbolic link) is
/// owned by this process's effective uid and grants group and others none
/// of `forbidden` (mode bits).
fn check_owner_and_mode(
    path: &Path,
    meta: &std::fs::Metadata,
    forbidden: u32,
    what: &str,
) -> Result<(), CacheError> {
    let unsafe_because = |why: String| CacheError::Unsafe {
        path: path.to_path_buf(),
        why,
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_because("is a symbolic link".into()));
    }
    let me = euid();
    if meta.uid() != me {
        return Err(unsafe_because(format!(
            "is owned by uid {}, not by this process's uid {me}",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & forbidden != 0 {
        return Err(unsafe_because(format!(
            "has mode {mode:04o}: {what}; run `chmod go-rwx` on it or choose another \
             plugins.cache_dir"
        )));
    }
    Ok(())
}

/// A digest of wasmtime's precompile compatibility hash: which compiler,
/// target, flags, tunables, Wasm features and wasmtime version produced
/// an artifact ([`Engine::precompile_compatibility_hash`]).
pub(crate) fn engine_digest(engine: &Engine) -> [u8; 32] {
    /// Feeds what a `Hash` impl writes into sha256 (all of it, not the
    /// 64 bits a `Hasher` would keep).
    struct Feed(Sha256);
    impl std::hash::Hasher for Feed {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            unreachable!("only `write` is used: the digest is read from the sha256")
        }
    }
    let mut feed = Feed(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut feed);
    feed.0.finalize().into()
}

/// An open, checked cache folder with its key.
pub(crate) struct Cache {
    dir: PathBuf,
    key: [u8; KEY_BYTES],
    /// [`engine_digest`] of the runtime's engine.
    engine: [u8; 32],
}

/// Makes temporary file names unique within the process (threads of one
/// process share its pid).
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `data` to `path` through a fresh temporary file (mode 0600,
/// never an existing file or link) renamed over it.
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), CacheError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".tmp{}.{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(data))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io(path))
}

impl Cache {
    /// Opens the cache at `dir` for an engine with [`engine_digest`]
    /// `engine`: creates the folder (0700) and key (0600) if missing and
    /// checks both.
    ///
    /// Errors: `Unsafe` when the folder or key is a symbolic link, owned by
    /// another uid, or open to group or others (write for the folder, any
    /// access for the key); `Io` when they cannot be created or read.
    pub(crate) fn open(dir: &Path, engine: [u8; 32]) -> Result<Cache, CacheError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let meta = std::fs::symlink_metadata(dir).map_err(io(dir))?;
        check_owner_and_mode(dir, &meta, 0o022, "others could plant compiled code in it")?;
        if !meta.is_dir() {
            return Err(CacheError::Unsafe {
                path: dir.to_path_buf(),
                why: "is not a directory".into(),
            });
        }
        let key = Cache::key(dir)?;
        Ok(Cache {
            dir: dir.to_path_buf(),
            key,
            engine,
        })
    }

    /// Reads the folder's key, creating it first if there is none.
    fn key(dir: &Path) -> Result<[u8; KEY_BYTES], CacheError> {
        let path = dir.join(KEY_FILE);
        if std::fs::symlink_metadata(&path).is_err() {
            // A fresh key in a temporary file, linked under the final name
            // only if none is there yet: two processes starting at once
            // agree on one key, and nobody reads a half-written one.
            let mut key = [0u8; KEY_BYTES];
            getrandom::fill(&mut key).map_err(|e| CacheError::Io {
                path: path.clone(),
                source: std::io::Error::other(format!("no OS random bytes: {e}")),
            })?;
            let tmp = dir.join(format!(
                "{KEY_FILE}.tmp{}.{}",
                std::process::id(),
                TMP_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let made = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| f.write_all(&key).and_then(|()| f.sync_all()))
                .and_then(|()| match std::fs::hard_link(&tmp, &path) {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                    other => other,
                });
            let _ = std::fs::remove_file(&tmp);
            made.map_err(io(&path))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io(&path))?;
        // The opened file's own metadata: what was checked is what is read.
        let meta = file.metadata().map_err(io(&path))?;
        check_owner_and_mode(&path, &meta, 0o077, "others could read or replace the key")?;
        if !meta.is_file() || meta.len() != KEY_BYTES as u64 {
            return Err(CacheError::Unsafe {
                path,
                why: format!("is not a {KEY_BYTES}-byte regular file"),
            });
        }
        let mut key = [0u8; KEY_BYTES];
        file.read_exact(&mut key).map_err(io(&path))?;
        Ok(key)
    }

    /// The folder.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// File stem of the entry for component sha256 `hash` (hex).
    fn stem(&self, hash: &str) -> String {
        format!("{hash}-{}", hex::encode(&self.engine[..8]))
    }

    /// The MAC of an entry: over the component's sha256, the engine digest
    /// and the artifact's sha256.
    fn mac(&self, hash: &str, artifact: &[u8]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(MAC_DOMAIN);
        // The component hash as the caller computed it from the bytes it
        // loads (hex, 64 characters), never as read from the entry.
        mac.update(hash.as_bytes());
        mac.update(&self.engine);
        mac.update(&Sha256::digest(artifact));
        mac
    }

    /// The compiled component for component sha256 `hash`, if a valid
    /// entry is there. A missing entry is `None` quietly; one that fails
    /// its MAC or that wasmtime refuses is logged at WARN (with the entry
    /// name) and `None`, so the caller compiles instead.
    pub(crate) fn load(&self, engine: &Engine, hash: &str) -> Option<Component> {
        let stem = self.stem(hash);
        let artifact = std::fs::read(self.dir.join(format!("{stem}.cwasm"))).ok()?;
        let mac = std::fs::read_to_string(self.dir.join(format!("{stem}.mac")))
            .ok()
            .and_then(|m| hex::decode(m.trim()).ok());
        let Some(mac) = mac else {
            tracing::warn!(entry = %stem, dir = %self.dir.display(),
                "compiled cache entry has no MAC; recompiling, not loading it");
            return None;
        };
        if self.mac(hash, &artifact).verify_slice(&mac).is_err() {
            tracing::warn!(entry = %stem, dir = %self.dir.display(),
                "compiled cache entry fails its MAC (copied from another plugin, altered, or \
                 not written by this installation); recompiling, not loading it");
            return None;
        }
        // SAFETY: the MAC verified under this installation's key, which only
        // this process's uid can read (checked in `Cache::key`), over this
        // component's sha256, this engine's compatibility digest and the
        // artifact's sha256: the bytes are what `Cache::store` wrote from
        // `Component::serialize` of this very component on a compatible
        // engine. wasmtime checks the engine compatibility again itself.
        match unsafe { Component::deserialize(engine, &artifact) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(entry = %stem, error = %e,
                    "compiled cache entry incompatible; recompiling");
                None
            }
        }
    }

    /// Writes the entry for component sha256 `hash`: the artifact, then its
    /// MAC (a reader between the two renames sees a MAC mismatch and
    /// recompiles).
    pub(crate) fn store(&self, hash: &str, component: &Component) -> Result<(), CacheError> {
        let artifact = component.serialize().map_err(CacheError::Serialize)?;
        let mac = hex::encode(self.mac(hash, &artifact).finalize().into_bytes());
        let stem = self.stem(hash);
        write_atomically(&self.dir.join(format!("{stem}.cwasm")), &artifact)?;
        write_atomically(&self.dir.join(format!("{stem}.mac")), mac.as_bytes())
    }

    /// Paths of the entry files for `hash` (artifact, MAC), for tests.
    #[cfg(test)]
    pub(crate) fn entry_paths(&self, hash: &str) -> (PathBuf, PathBuf) {
        let stem = self.stem(hash);
        (
            self.dir.join(format!("{stem}.cwasm")),
            self.dir.join(format!("{stem}.mac")),
        )
    }
}

//! Releases on disk: the `release.toml` manifest, its validation and its limits.
//!
//! A release is a directory holding plugin libraries and a manifest:
//!
//! ```toml
//! name = "v2"                 # optional label, shown in status and history
//! complete = false            # true: the release is the whole plugin set, nothing carries over
//! remove = ["frob-shim"]      # plugins of the current generation to drop
//!
//! [[plugin]]
//! name = "frob"               # must match the name the library declares
//! file = "libfrob_v2.so"      # relative to the release directory
//! sha256 = "9f2c…"            # of the file; a mismatch rejects the release
//! ```
//!
//! By default a release names only the plugins that change; the others carry over from the
//! current generation, and the new set is linked as a whole before it goes live.
//!
//! A manifest is input from outside, so reading it is bounded: its size and its number of
//! plugins have [`Limits`], checked before anything else, and validation is linear in its size.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic_file;
use crate::bounded::{Bounded, BoundedPath};
use crate::decl::check_plugin_name;

/// The manifest's file name inside a release directory.
pub const MANIFEST: &str = "release.toml";

pub use crate::signature::SIGNATURE;

/// How large a manifest may be. Past a limit the release is refused before it is parsed (size)
/// or validated (plugins). `[limits]` in `graft.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Limits {
    /// The largest manifest file, in bytes (default 1 MiB).
    pub max_manifest_bytes: u64,
    /// The most plugins (shipped plus removed) one release may name (default 1,024).
    pub max_plugins: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_manifest_bytes: 1 << 20,
            max_plugins: 1024,
        }
    }
}

impl Limits {
    /// No limits: for tools and benchmarks that read trusted manifests.
    pub fn none() -> Self {
        Self {
            max_manifest_bytes: u64::MAX,
            max_plugins: usize::MAX,
        }
    }
}

/// A parsed, validated `release.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// A label for the release: at most [`MAX_RELEASE_NAME`] bytes, no control characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether the release is the whole plugin set (nothing carries over).
    #[serde(default)]
    pub complete: bool,
    /// Plugins of the current generation to drop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// The plugins the release ships.
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<ManifestPlugin>,
}

/// One plugin file of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestPlugin {
    /// The plugin's declared name.
    pub name: String,
    /// The library, relative to the release directory.
    pub file: PathBuf,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The release directory has no manifest.
    #[error("no {MANIFEST} in {}", BoundedPath(dir))]
    Missing {
        /// The release directory.
        dir: PathBuf,
    },
    /// The manifest could not be read.
    #[error("reading {}", BoundedPath(path))]
    Read {
        /// The manifest.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The manifest is larger than [`Limits::max_manifest_bytes`].
    #[error(
        "{} is larger than the {limit} bytes a manifest may have",
        BoundedPath(path)
    )]
    TooLarge {
        /// The manifest.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// The manifest is not valid TOML of the expected shape.
    #[error("malformed {}: {}", BoundedPath(path), Bounded(reason))]
    Parse {
        /// The manifest.
        path: PathBuf,
        /// Where and why, on one line (`line 3, column 9: ...`).
        reason: String,
    },
    /// The manifest parses but says something impossible, or names too many plugins.
    #[error("invalid {}: {reason}", BoundedPath(path))]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// What is wrong (input in it is quoted bounded).
        reason: String,
    },
}

/// The longest release name, in bytes: a label for people and metrics, not a document.
pub const MAX_RELEASE_NAME: usize = 128;

/// Checks a release name: 1 to [`MAX_RELEASE_NAME`] bytes, no control characters (it is shown in
/// logs, status, metrics labels and response headers).
///
/// # Errors
///
/// A message saying why not, quoting a bounded slice of it.
pub fn check_release_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_RELEASE_NAME {
        return Err(format!(
            "release name {} has {} bytes; use 1 to {MAX_RELEASE_NAME}",
            Bounded(name),
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "release name {:?} has a control character",
            Bounded(name).to_string()
        ));
    }
    Ok(())
}

impl Manifest {
    /// Reads and validates `DIR/release.toml` within the default [`Limits`].
    ///
    /// # Errors
    ///
    /// [`ManifestError`] when the file is missing, unreadable, too large, malformed or invalid.
    pub fn load(dir: &Path) -> Result<Self, ManifestError> {
        Self::load_within(dir, &Limits::default())
    }

    /// Reads and validates `DIR/release.toml` within `limits`.
    ///
    /// # Errors
    ///
    /// As [`Manifest::load`].
    pub fn load_within(dir: &Path, limits: &Limits) -> Result<Self, ManifestError> {
        let path = dir.join(MANIFEST);
        let file = crate::input::open_regular(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ManifestError::Missing {
                dir: dir.to_owned(),
            },
            _ => ManifestError::Read {
                path: path.clone(),
                source,
            },
        })?;
        Self::read_within(file, &path, limits)
    }

    /// Reads and validates a manifest from `reader` (at most one byte past the limit: a larger
    /// one is refused without reading it), `path` naming it in errors: how a bundle's manifest
    /// is read as it streams in.
    ///
    /// # Errors
    ///
    /// As [`Manifest::load`].
    pub fn read_within(
        reader: impl Read,
        path: &Path,
        limits: &Limits,
    ) -> Result<Self, ManifestError> {
        let mut text = String::new();
        reader
            .take(limits.max_manifest_bytes.saturating_add(1))
            .read_to_string(&mut text)
            .map_err(|source| ManifestError::Read {
                path: path.to_owned(),
                source,
            })?;
        if text.len() as u64 > limits.max_manifest_bytes {
            return Err(ManifestError::TooLarge {
                path: path.to_owned(),
                limit: limits.max_manifest_bytes,
            });
        }
        Self::parse(&text, limits).map_err(|e| e.at(path.to_owned()))
    }

    /// Parses and validates manifest text.
    fn parse(text: &str, limits: &Limits) -> Result<Self, Unplaced> {
        let manifest: Self =
            toml::from_str(text).map_err(|e| Unplaced::Parse(one_line(text, &e)))?;
        manifest.validate(limits).map_err(Unplaced::Invalid)?;
        Ok(manifest)
    }

    /// Checks what TOML cannot: names, paths, checksums, duplicates. Linear in the manifest.
    fn validate(&self, limits: &Limits) -> Result<(), String> {
        let named = self.plugins.len().saturating_add(self.remove.len());
        if named > limits.max_plugins {
            return Err(format!(
                "it names {named} plugins; a release may name at most {}",
                limits.max_plugins
            ));
        }
        if self.plugins.is_empty() && self.remove.is_empty() {
            return Err("it names no plugin and removes none".into());
        }
        if let Some(name) = &self.name {
            check_release_name(name)?;
        }
        let mut shipped = HashSet::with_capacity(self.plugins.len());
        for plugin in &self.plugins {
            check_plugin_name(&plugin.name)?;
            if !shipped.insert(plugin.name.as_str()) {
                return Err(format!("plugin {} is listed twice", plugin.name));
            }
            let inside = plugin
                .file
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
            if !inside || plugin.file.as_os_str().is_empty() {
                return Err(format!(
                    "plugin {}: file {} must be a relative path inside the release",
                    plugin.name,
                    BoundedPath(&plugin.file)
                ));
            }
            let hex_ok = plugin.sha256.len() == 64
                && plugin
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok {
                return Err(format!(
                    "plugin {}: sha256 must be 64 lowercase hex digits",
                    plugin.name
                ));
            }
        }
        for removed in &self.remove {
            check_plugin_name(removed)?;
            if shipped.contains(removed.as_str()) {
                return Err(format!("plugin {removed} is both shipped and removed"));
            }
        }
        if self.complete && !self.remove.is_empty() {
            return Err("a complete release replaces everything; it cannot also remove".into());
        }
        Ok(())
    }
}

/// A manifest error before it is given the manifest's path.
enum Unplaced {
    Parse(String),
    Invalid(String),
}

impl Unplaced {
    fn at(self, path: PathBuf) -> ManifestError {
        match self {
            Self::Parse(reason) => ManifestError::Parse { path, reason },
            Self::Invalid(reason) => ManifestError::Invalid { path, reason },
        }
    }
}

/// A TOML error as `line L, column C: message`, without the multi-line source snippet.
fn one_line(text: &str, error: &toml::de::Error) -> String {
    let message = error
        .message()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// Writes a release directory: copies each `(name, library)` into `dir` and writes a manifest
/// with their checksums. What `graft pack` does once it has read the plugins' names.
///
/// # Errors
///
/// Any I/O error while copying or writing.
pub fn write_release(
    dir: &Path,
    label: Option<&str>,
    complete: bool,
    plugins: &[(&str, &Path)],
    remove: &[String],
) -> io::Result<Manifest> {
    fs::create_dir_all(dir)?;
    let mut manifest = Manifest {
        name: label.map(str::to_owned),
        complete,
        remove: remove.to_vec(),
        plugins: Vec::new(),
    };
    for (name, library) in plugins {
        let file = PathBuf::from(library.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no file name", library.display()),
            )
        })?);
        let sha256 = atomic_file::copy(library, &dir.join(&file))?;
        manifest.plugins.push(ManifestPlugin {
            name: (*name).to_owned(),
            file,
            sha256,
        });
    }
    let text =
        toml::to_string(&manifest).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    atomic_file::write(&dir.join(MANIFEST), text.as_bytes())?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Manifest, ManifestError> {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MANIFEST), text).unwrap();
        Manifest::load(dir.path())
    }

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn plugins(n: usize) -> String {
        (0..n)
            .map(|i| {
                format!("[[plugin]]\nname = \"p{i}\"\nfile = \"p{i}.so\"\nsha256 = \"{SHA}\"\n")
            })
            .collect()
    }

    #[test]
    fn a_good_manifest_parses() {
        let m = load(&format!(
            "name = \"v2\"\nremove = [\"old\"]\n[[plugin]]\nname = \"foo\"\nfile = \"libfoo.so\"\nsha256 = \"{SHA}\"\n"
        ))
        .unwrap();
        assert_eq!(m.name.as_deref(), Some("v2"));
        assert_eq!(m.plugins[0].file, Path::new("libfoo.so"));
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Manifest::load(dir.path()),
            Err(ManifestError::Missing { .. })
        ));
        assert!(matches!(
            load("[[plugin]\nname ="),
            Err(ManifestError::Parse { .. })
        ));
        assert!(matches!(
            load("colour = \"blue\""),
            Err(ManifestError::Parse { .. })
        ));
        let cases = [
            ("", "names no plugin"),
            (&*format!("[[plugin]]\nname = \"Foo\"\nfile = \"a.so\"\nsha256 = \"{SHA}\""), "invalid plugin name"),
            (&*format!("[[plugin]]\nname = \"foo\"\nfile = \"../a.so\"\nsha256 = \"{SHA}\""), "inside the release"),
            ("[[plugin]]\nname = \"foo\"\nfile = \"a.so\"\nsha256 = \"abc\"", "64 lowercase hex"),
            (
                &*format!("[[plugin]]\nname = \"foo\"\nfile = \"a.so\"\nsha256 = \"{SHA}\"\n[[plugin]]\nname = \"foo\"\nfile = \"b.so\"\nsha256 = \"{SHA}\""),
                "listed twice",
            ),
            ("remove = [\"Bad Name\"]", "invalid plugin name"),
            (&*format!("name = \"{}\"\nremove = [\"foo\"]", "x".repeat(4096)), "has 4096 bytes; use 1 to 128"),
            ("name = \"a\\u001b[31mred\"\nremove = [\"foo\"]", "control character"),
            ("name = \"\"\nremove = [\"foo\"]", "use 1 to 128"),
        ];
        for (text, expected) in cases {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn manifests_past_the_limits_are_refused_and_quoted_briefly() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MANIFEST), plugins(50)).unwrap();
        let few = Limits {
            max_plugins: 10,
            ..Limits::default()
        };
        let err = Manifest::load_within(dir.path(), &few)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("names 50 plugins; a release may name at most 10"),
            "{err}"
        );
        let small = Limits {
            max_manifest_bytes: 100,
            ..Limits::default()
        };
        let err = Manifest::load_within(dir.path(), &small).unwrap_err();
        assert!(
            matches!(err, ManifestError::TooLarge { limit: 100, .. }),
            "{err}"
        );

        let huge_name = format!(
            "[[plugin]]\nname = \"{}\"\nfile = \"a.so\"\nsha256 = \"{SHA}\"\n",
            "x".repeat(100_000)
        );
        let err = load(&huge_name).unwrap_err().to_string();
        assert!(err.len() < 1024, "{} bytes: {err}", err.len());
    }

    #[test]
    fn validation_accepts_a_large_manifest_within_lifted_limits() {
        let manifest = Manifest::parse(&plugins(5000), &Limits::none())
            .ok()
            .unwrap();
        assert_eq!(manifest.plugins.len(), 5000);
    }
}

//! `plugstack.conf`: the SPANK plugins slurmstepd loads (sgpu's own
//! `spank_sgpu.so` among them).
//!
//! Syntax as in Slurm's `spank.c`: each line is `required|optional PATH
//! [ARGS...]` or `include GLOB`, words separated by spaces or tabs, `#`
//! starts a comment anywhere. A relative `include` is relative to the
//! directory of the file that contains it; a relative plugin PATH is looked
//! up in `PluginDir` when the plugin is loaded (see
//! [`SpankEntry::resolve`]). Slurm skips invalid lines with an error; here
//! they are reported as errors. Unlike Slurm, include loops are detected.
//! A missing `plugstack.conf` is not an error for Slurm; [`PlugstackConf::load`]
//! reports it as [`ConfError::Io`] and the caller decides.

use std::path::{Path, PathBuf};

use crate::conf::{
    ConfError, ConfFile, Location, Source, canonical, include_files, read_text, sort_errors,
};

/// One `required`/`optional` plugin line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SpankEntry {
    /// `required` (a load failure aborts the job step) or `optional`.
    pub required: bool,
    /// The plugin path as written.
    pub path: PathBuf,
    /// Arguments passed to the plugin.
    pub args: Vec<String>,
    /// Where the line is.
    pub at: Location,
}

impl SpankEntry {
    /// The file slurmstepd would load: an absolute path as is, a relative one
    /// from the first directory of the colon-separated `plugin_dir`
    /// (Slurm's `PluginDir`) where it exists.
    pub fn resolve(&self, plugin_dir: &str) -> Option<PathBuf> {
        if self.path.is_absolute() {
            return self.path.exists().then(|| self.path.clone());
        }
        plugin_dir
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(&self.path))
            .find(|p| p.exists())
    }
}

/// A parsed `plugstack.conf` (with its includes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PlugstackConf {
    /// The file it was read from (or the origin given to `parse_str`).
    pub path: PathBuf,
    /// Every file read, in order.
    pub files: Vec<PathBuf>,
    /// The plugins in load order.
    pub entries: Vec<SpankEntry>,
}

/// Parsing state.
#[derive(Default)]
struct Builder {
    conf: PlugstackConf,
    errors: Vec<ConfError>,
    stack: Vec<PathBuf>,
}

impl Builder {
    fn file(&mut self, text: &str, origin: &Path) {
        self.conf.files.push(origin.to_path_buf());
        self.stack.push(canonical(origin));
        for (i, raw) in text.split('\n').enumerate() {
            self.line(raw, Location::new(origin, i + 1), origin);
        }
        self.stack.pop();
    }

    fn line(&mut self, raw: &str, at: Location, origin: &Path) {
        let text = raw.split('#').next().unwrap_or("");
        let mut words = text.split([' ', '\t']).filter(|w| !w.is_empty());
        let Some(kind) = words.next() else { return };
        if text.contains('\r') {
            self.errors.push(ConfError::at(
                &at,
                "carriage return in line (DOS line endings?): Slurm would read it as part of a word",
            ));
            return;
        }
        let required = match kind {
            "required" => true,
            "optional" => false,
            "include" => {
                match words.next() {
                    Some(pattern) => self.include(pattern, &at, origin),
                    None => self.errors.push(ConfError::at(
                        &at,
                        "include needs a file or glob: expected `include <glob>`",
                    )),
                }
                return;
            }
            other => {
                self.errors.push(ConfError::at(
                    &at,
                    format!("invalid option `{other}`: expected required, optional or include (lower case)"),
                ));
                return;
            }
        };
        let Some(path) = words.next() else {
            self.errors.push(ConfError::at(
                &at,
                format!(
                    "{kind} needs a plugin path: expected `{kind} /path/to/plugin.so [args...]`"
                ),
            ));
            return;
        };
        self.conf.entries.push(SpankEntry {
            required,
            path: PathBuf::from(path),
            args: words.map(String::from).collect(),
            at,
        });
    }

    fn include(&mut self, pattern: &str, at: &Location, origin: &Path) {
        let included = include_files(
            pattern,
            at,
            origin,
            &self.stack,
            "include",
            &mut self.errors,
        );
        for (p, text) in included {
            self.file(&text, &p);
        }
    }
}

impl ConfFile for PlugstackConf {
    fn read(source: Source<'_>) -> (Self, Vec<ConfError>) {
        let origin = source.origin();
        let read;
        let text = match source {
            Source::Text { text, .. } => text,
            Source::File(path) => match read_text(path) {
                Ok(t) => {
                    read = t;
                    &read
                }
                Err(source) => {
                    let conf = PlugstackConf {
                        path: path.to_path_buf(),
                        ..PlugstackConf::default()
                    };
                    let path = path.to_path_buf();
                    return (conf, vec![ConfError::Io { path, source }]);
                }
            },
        };
        let mut b = Builder::default();
        b.conf.path = origin.to_path_buf();
        b.file(text, origin);
        sort_errors(&mut b.errors, &b.conf.files);
        (b.conf, b.errors)
    }
}

impl PlugstackConf {
    /// The entry whose plugin file name is `file_name` (e.g. `spank_sgpu.so`).
    pub fn find(&self, file_name: &str) -> Option<&SpankEntry> {
        self.entries
            .iter()
            .find(|e| e.path.file_name().is_some_and(|f| f == file_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_args_and_comments() {
        let p = PlugstackConf::parse_str(
            "# SPANK plugins\n\
             required /usr/lib/slurm/spank_sgpu.so spool=/var/spool/sgpu\tverbose # sgpu\n\
             \n\
             optional  x11.so\n",
            "/etc/slurm/plugstack.conf",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.entries.len(), 2);
        let e = &p.entries[0];
        assert!(e.required);
        assert_eq!(e.path, PathBuf::from("/usr/lib/slurm/spank_sgpu.so"));
        assert_eq!(e.args, ["spool=/var/spool/sgpu", "verbose"]);
        assert_eq!(e.at.to_string(), "/etc/slurm/plugstack.conf:2");
        assert!(!p.entries[1].required);
        assert_eq!(p.entries[1].at.line, 4);
        assert!(p.find("spank_sgpu.so").is_some());
        assert!(p.find("nope.so").is_none());
    }

    #[test]
    fn errors_name_file_line() {
        let cases = [
            ("Required x.so\n", ":1: invalid option `Required`"),
            ("\n\nrequired\n", ":3: required needs a plugin path"),
            ("include\n", ":1: include needs a file or glob"),
            ("optional x.so\r\n", ":1: carriage return"),
        ];
        for (text, want) in cases {
            let err = PlugstackConf::parse_str(text, "/p.conf")
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("/p.conf:") && err.contains(want),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn include_relative_glob_and_loops() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir(root.join("plugstack.conf.d")).unwrap();
        std::fs::write(
            root.join("plugstack.conf"),
            "required /a.so\ninclude plugstack.conf.d/*.conf\ninclude nothing-matches-*.conf\n",
        )
        .unwrap();
        std::fs::write(root.join("plugstack.conf.d/1.conf"), "optional /b.so x\n").unwrap();
        std::fs::write(
            root.join("plugstack.conf.d/2.conf"),
            "include ../plugstack.conf\n",
        )
        .unwrap();
        let (p, errs) = PlugstackConf::load_lenient(root.join("plugstack.conf"));
        let paths: Vec<&Path> = p.entries.iter().map(|e| e.path.as_path()).collect();
        assert_eq!(paths, [Path::new("/a.so"), Path::new("/b.so")]);
        assert_eq!(errs.len(), 1, "{errs:?}");
        let msg = errs[0].to_string();
        assert!(msg.contains("2.conf:1: include loop"), "{msg}");
        assert_eq!(p.files.len(), 3);
    }

    #[test]
    fn resolve_in_plugin_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x.so"), "").unwrap();
        let p = PlugstackConf::parse_str(
            "optional x.so\nrequired /definitely/not/here.so\n",
            "/p.conf",
        )
        .unwrap();
        let dirs = format!("/nonexistent:{}", d.path().display());
        assert_eq!(p.entries[0].resolve(&dirs), Some(d.path().join("x.so")));
        assert_eq!(p.entries[1].resolve(&dirs), None);
    }

    #[test]
    fn missing_file_is_io_error() {
        let err = PlugstackConf::load("/nonexistent/plugstack.conf").unwrap_err();
        assert!(matches!(err, ConfError::Io { .. }));
    }
}

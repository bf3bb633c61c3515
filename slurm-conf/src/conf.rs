//! The syntax Slurm's `s_p_parse_file()` reads, shared by `slurm.conf` and
//! `gres.conf`: comments, line continuation, escapes, `Key=Value` pairs and
//! `Include` directives. Interpreting the pairs is left to the file modules.
//!
//! Behaviour copied from Slurm 22.05 (checked against `scontrol`):
//! - `#` starts a comment unless preceded by an odd number of `\`.
//! - A line ending in an odd number of `\` (trailing blanks allowed) continues
//!   on the next line; the two are glued without a space.
//! - After that, `\x` becomes `x` everywhere (so `\\` is a backslash).
//! - A pair is `Key[+-*/]=Value` with optional blanks around `=`; the value is
//!   either `"quoted, with blanks"` or a run of non-blank characters.
//! - `Include FILE` (case-insensitive, at the start of the line) reads FILE;
//!   a relative FILE is relative to the directory of the including file, and
//!   `%c` in it is replaced by the (lower-cased) ClusterName seen so far.
//!   Unlike Slurm 22.05, FILE may also be a glob (`slurm.conf.d/*.conf`).

use std::fmt;
use std::path::{Path, PathBuf};

/// Where something was read: file and 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Location {
    /// The file (as given, or as resolved for included files).
    pub file: PathBuf,
    /// Line number of the first physical line of the statement.
    pub line: usize,
}

impl Location {
    /// A location in `file` at `line`.
    pub fn new(file: impl Into<PathBuf>, line: usize) -> Self {
        Location {
            file: file.into(),
            line,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// An error in a configuration file, naming the file (and line) and what was
/// expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The content is wrong at a given place.
    #[error("{at}: {msg}")]
    Invalid {
        /// Where.
        at: Location,
        /// What is wrong and what was expected.
        msg: String,
    },
}

impl ConfError {
    /// Builds an [`ConfError::Invalid`].
    pub(crate) fn at(at: &Location, msg: impl Into<String>) -> Self {
        ConfError::Invalid {
            at: at.clone(),
            msg: msg.into(),
        }
    }

    /// The file and line the error is about, when it is about one.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfError::Invalid { at, .. } => Some(at),
            ConfError::Io { .. } => None,
        }
    }
}

/// Largest file the parsers read (configuration files are small; this keeps
/// a mistaken `Include /var/log/huge` from exhausting memory).
const MAX_FILE_SIZE: u64 = 64 << 20;
/// Deepest nesting of `Include` (slurm.conf) and `include` (plugstack.conf).
const MAX_INCLUDE_DEPTH: usize = 16;
/// Most statements read over all files.
const MAX_STATEMENTS: usize = 4_000_000;

/// One `Key=Value` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pair {
    /// The key as written.
    pub key: String,
    /// `+`, `-`, `*` or `/` for `Key+=Value` and friends.
    pub op: Option<char>,
    /// The value, without surrounding quotes.
    pub value: String,
}

impl Pair {
    /// Case-insensitive key comparison, as Slurm does.
    pub fn is(&self, key: &str) -> bool {
        self.key.eq_ignore_ascii_case(key)
    }
}

/// One logical line with its pairs.
#[derive(Debug, Clone)]
pub(crate) struct Stmt {
    /// Where it starts.
    pub at: Location,
    /// Every pair that could be read, in order.
    pub pairs: Vec<Pair>,
    /// Text left after the last pair that is not blank (a syntax error).
    pub leftover: Option<String>,
}

/// `isspace()` in the C locale.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Slurm's `_strip_comments`: cut at the first `#` not escaped by an odd
/// number of backslashes.
fn strip_comment(line: &str) -> &str {
    let mut bs = 0usize;
    for (i, c) in line.bytes().enumerate() {
        if c == b'#' && bs % 2 == 0 {
            return &line[..i];
        } else if c == b'\\' {
            bs += 1;
        } else {
            bs = 0;
        }
    }
    line
}

/// Slurm's `_strip_continuation`: when the line ends with an odd number of
/// backslashes (blanks may follow), returns it without the last backslash and
/// what follows.
fn strip_continuation(line: &str) -> Option<&str> {
    let b = line.as_bytes();
    let mut p = b.len();
    let mut bs = 0usize;
    while p > 0 {
        let c = b[p - 1];
        if c == b'\\' {
            bs += 1;
        } else if !(is_space(c) && bs == 0) {
            break;
        }
        p -= 1;
    }
    if bs % 2 == 1 {
        // `p` is one past the character before the backslashes.
        Some(&line[..p + bs - 1])
    } else {
        None
    }
}

/// Slurm's `_strip_escapes`: `\x` becomes `x`.
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits a file into logical lines: `(first line number, text)`, comments
/// and continuations handled, escapes removed, empty lines dropped.
pub(crate) fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut start = 1usize;
    let mut line_no = 0usize;
    let mut pending = false;
    for phys in text.split_inclusive('\n') {
        line_no += 1;
        if !pending {
            start = line_no;
            buf.clear();
        }
        let s = strip_comment(phys);
        match strip_continuation(s) {
            Some(kept) => {
                buf.push_str(kept);
                pending = true;
            }
            None => {
                buf.push_str(s);
                pending = false;
                if !buf.is_empty() {
                    out.push((start, strip_escapes(&buf)));
                }
            }
        }
    }
    if pending && !buf.is_empty() {
        out.push((start, strip_escapes(&buf)));
    }
    out
}

/// Reads one pair at the start of `s` (Slurm's key/value regular
/// expression); returns it and the byte offset just after the value.
pub(crate) fn next_pair(s: &str) -> Option<(Pair, usize)> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && is_space(b[i]) {
        i += 1;
    }
    let key_start = i;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
        i += 1;
    }
    if i == key_start {
        return None;
    }
    let key = &s[key_start..i];
    while i < b.len() && is_space(b[i]) {
        i += 1;
    }
    let mut op = None;
    if i < b.len() && matches!(b[i], b'-' | b'*' | b'+' | b'/') {
        op = Some(b[i] as char);
        i += 1;
    }
    if i >= b.len() || b[i] != b'=' {
        return None;
    }
    i += 1;
    while i < b.len() && is_space(b[i]) {
        i += 1;
    }
    let v_start = i;
    // Unquoted: a run of non-blank characters.
    let mut j = i;
    while j < b.len() && !is_space(b[j]) {
        j += 1;
    }
    // Quoted: "..." followed by a blank or the end. POSIX leftmost-longest
    // picks it when it is at least as long as the unquoted run.
    if b.get(i) == Some(&b'"') {
        if let Some(close) = b[i + 1..]
            .iter()
            .position(|&c| c == b'"')
            .map(|p| p + i + 1)
        {
            let end = close + 1;
            if (end == b.len() || is_space(b[end])) && end >= j {
                let value = s[i + 1..close].to_string();
                return Some((
                    Pair {
                        key: key.to_string(),
                        op,
                        value,
                    },
                    end,
                ));
            }
        }
    }
    if j == v_start {
        return None;
    }
    Some((
        Pair {
            key: key.to_string(),
            op,
            value: s[v_start..j].to_string(),
        },
        j,
    ))
}

/// Reads as many pairs as possible; returns them and the non-blank leftover.
pub(crate) fn parse_pairs(s: &str) -> (Vec<Pair>, Option<String>) {
    let mut pairs = Vec::new();
    let mut rest = s;
    while let Some((p, end)) = next_pair(rest) {
        pairs.push(p);
        rest = &rest[end..];
    }
    let left = rest.trim_matches(|c: char| c.is_ascii() && is_space(c as u8));
    (pairs, (!left.is_empty()).then(|| left.to_string()))
}

/// If the line is an `Include` directive, returns the file name (or `""`
/// when missing) and any text after it.
fn include_directive(line: &str) -> Option<(&str, &str)> {
    let b = line.as_bytes();
    if b.len() < 8 || !b[..7].eq_ignore_ascii_case(b"include") || !is_space(b[7]) {
        return None;
    }
    let mut i = 7;
    while i < b.len() && is_space(b[i]) {
        i += 1;
    }
    let start = i;
    while i < b.len() && !is_space(b[i]) {
        i += 1;
    }
    Some((&line[start..i], &line[i..]))
}

/// Reads a configuration file with its includes into statements.
#[derive(Debug, Default)]
pub(crate) struct Loader {
    /// Statements in reading order (includes inlined).
    pub stmts: Vec<Stmt>,
    /// Problems found while reading.
    pub errors: Vec<ConfError>,
    /// Files read, in order.
    pub files: Vec<PathBuf>,
    /// Include stack (canonical paths) for loop detection.
    stack: Vec<PathBuf>,
    /// ClusterName seen so far, for `%c` in include paths.
    cluster_name: Option<String>,
}

/// Reads a regular file of reasonable size as (lossy) UTF-8.
pub(crate) fn read_text(path: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > MAX_FILE_SIZE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_SIZE} bytes; is this really a configuration file?"),
        ));
    }
    let bytes = std::fs::read(path)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The canonical form of a path for loop detection (the path itself when it
/// cannot be resolved).
pub(crate) fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// An include target that cannot be expanded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IncludeError {
    /// The glob is not valid UTF-8.
    #[error("the include path is not valid UTF-8; rename the file or name it without a glob")]
    NotUtf8,
    /// The glob does not parse.
    #[error("invalid glob pattern `{pattern}`: {source}")]
    BadGlob {
        /// The pattern as written.
        pattern: String,
        /// The glob crate's error.
        source: glob::PatternError,
    },
}

/// Expands an include target relative to `dir`: a glob when it has glob
/// characters, else the literal path.
pub(crate) fn resolve_include(pattern: &str, dir: &Path) -> Result<Vec<PathBuf>, IncludeError> {
    let full = if Path::new(pattern).is_absolute() {
        PathBuf::from(pattern)
    } else {
        dir.join(pattern)
    };
    if !pattern.contains(['*', '?', '[']) {
        return Ok(vec![full]);
    }
    let Some(pat) = full.to_str() else {
        return Err(IncludeError::NotUtf8);
    };
    let paths = glob::glob(pat).map_err(|source| IncludeError::BadGlob {
        pattern: pattern.to_string(),
        source,
    })?;
    let mut out: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
    if out.is_empty() && full.exists() {
        out.push(full);
    }
    out.sort();
    Ok(out)
}

/// The directory relative paths in `file` are resolved against.
pub(crate) fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl Loader {
    /// Reads `source` and everything it includes.
    pub fn load(&mut self, source: Source<'_>) {
        match source {
            Source::File(path) => self.load_file(path),
            Source::Text { text, origin } => self.load_str(text, origin),
        }
    }

    /// Reads `path` and everything it includes.
    pub fn load_file(&mut self, path: &Path) {
        match read_text(path) {
            Ok(text) => self.load_str(&text, path),
            Err(source) => self.errors.push(ConfError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Reads `text` as if it were the content of `origin`.
    pub fn load_str(&mut self, text: &str, origin: &Path) {
        self.files.push(origin.to_path_buf());
        self.stack.push(canonical(origin));
        for (line, content) in logical_lines(text) {
            if self.stmts.len() >= MAX_STATEMENTS {
                self.errors.push(ConfError::at(
                    &Location::new(origin, line),
                    format!("more than {MAX_STATEMENTS} statements; giving up"),
                ));
                break;
            }
            let at = Location::new(origin, line);
            if let Some((file, rest)) = include_directive(&content) {
                self.include(&at, file, rest, origin);
                continue;
            }
            let (pairs, leftover) = parse_pairs(&content);
            if let Some(first) = pairs.first() {
                if first.is("ClusterName") {
                    self.cluster_name = Some(crate::slurm_conf::cluster_name_rule(&first.value));
                }
            }
            self.stmts.push(Stmt {
                at,
                pairs,
                leftover,
            });
        }
        self.stack.pop();
    }

    fn include(&mut self, at: &Location, file: &str, rest: &str, origin: &Path) {
        if file.is_empty() {
            self.errors.push(ConfError::at(
                at,
                "Include needs a file name: expected `Include <file>`",
            ));
            return;
        }
        if !rest.trim().is_empty() {
            self.errors.push(ConfError::at(
                at,
                format!(
                    "unexpected `{}` after the Include file name (one file per Include line)",
                    rest.trim()
                ),
            ));
        }
        let mut name = file.to_string();
        if name.contains("%c") {
            match &self.cluster_name {
                Some(c) => name = name.replace("%c", c),
                None => {
                    self.errors.push(ConfError::at(
                        at,
                        format!("Include `{file}` uses %c but no ClusterName was set before it"),
                    ));
                    return;
                }
            }
        }
        let included = include_files(&name, at, origin, &self.stack, "Include", &mut self.errors);
        for (p, text) in included {
            self.load_str(&text, &p);
        }
    }
}

/// The files an include line at `at` of `origin` names (`pattern`, relative to `origin`'s
/// directory, a glob or a path) with their text, for the caller to read in order while
/// `stack` (the canonical paths being read) still holds. A file already in `stack` (a loop),
/// one nested deeper than [`MAX_INCLUDE_DEPTH`] and one that cannot be read are errors at
/// `at`, starting with `keyword` (`Include` in slurm.conf, `include` in plugstack.conf); a
/// pattern that cannot be expanded is one error and no file.
pub(crate) fn include_files(
    pattern: &str,
    at: &Location,
    origin: &Path,
    stack: &[PathBuf],
    keyword: &str,
    errors: &mut Vec<ConfError>,
) -> Vec<(PathBuf, String)> {
    let paths = match resolve_include(pattern, &dir_of(origin)) {
        Ok(p) => p,
        Err(e) => {
            errors.push(ConfError::at(at, e.to_string()));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for p in paths {
        if stack.contains(&canonical(&p)) {
            let chain: Vec<String> = stack.iter().map(|s| s.display().to_string()).collect();
            errors.push(ConfError::at(
                at,
                format!(
                    "{keyword} loop: {} includes {} again (chain: {})",
                    origin.display(),
                    p.display(),
                    chain.join(" -> ")
                ),
            ));
            continue;
        }
        if stack.len() >= MAX_INCLUDE_DEPTH {
            errors.push(ConfError::at(
                at,
                format!(
                    "{keyword} nested more than {MAX_INCLUDE_DEPTH} levels deep at {}",
                    p.display()
                ),
            ));
            continue;
        }
        match read_text(&p) {
            Ok(text) => out.push((p, text)),
            // A literal path that does not exist: Slurm's glob() finds no match and silently
            // skips it; report it, it is surely a typo.
            Err(e) => errors.push(ConfError::at(
                at,
                format!("cannot read included file {}: {e}", p.display()),
            )),
        }
    }
    out
}

/// Orders errors by file (in reading order), then line; I/O errors first.
pub(crate) fn sort_errors(errors: &mut [ConfError], files: &[PathBuf]) {
    let key = |e: &ConfError| {
        e.location().map(|l| {
            let f = files
                .iter()
                .position(|f| *f == l.file)
                .unwrap_or(usize::MAX);
            (f, l.line)
        })
    };
    errors.sort_by_key(key);
}

/// The value, or the first error.
fn first_error<T>((v, mut errors): (T, Vec<ConfError>)) -> Result<T, ConfError> {
    if errors.is_empty() {
        Ok(v)
    } else {
        Err(errors.swap_remove(0))
    }
}

/// A parser of the statements a [`Loader`] read: slurm.conf's and gres.conf's builders.
pub(crate) trait StmtParser: Default {
    /// The parsed file.
    type Conf;
    /// Takes one statement, in file order.
    fn stmt(&mut self, s: &Stmt);
    /// Runs after the last statement (checks across lines).
    fn finish(&mut self) {}
    /// The parsed file and the errors the parser found.
    fn into_parts(self) -> (Self::Conf, Vec<ConfError>);
}

/// Reads `source` with its includes and parses its statements with `P`; returns the parsed
/// file, the files read and every error (the loader's, then the parser's), sorted by file
/// and line.
pub(crate) fn parse_statements<P: StmtParser>(
    source: Source<'_>,
) -> (P::Conf, Vec<PathBuf>, Vec<ConfError>) {
    let mut loader = Loader::default();
    loader.load(source);
    let mut parser = P::default();
    for s in &loader.stmts {
        parser.stmt(s);
    }
    parser.finish();
    let (conf, found) = parser.into_parts();
    let mut errors = loader.errors;
    errors.extend(found);
    sort_errors(&mut errors, &loader.files);
    (conf, loader.files, errors)
}

/// A [`StmtParser`] that can also keep only what one node needs (its own records), without
/// expanding the host lists of the others; its errors must then be those of the full parse,
/// and where it cannot tell that without the names it says so ([`NodeScoped::needs_full`]).
pub(crate) trait NodeScoped: StmtParser {
    /// A parser that keeps what `node` needs.
    fn for_node(node: &str) -> Self;
    /// Whether the scoped parse met something it cannot decide without every name (two
    /// lines that may name one node, names no line defines, ...): the statements are then
    /// parsed again in full, so the result and the errors are the full parse's.
    fn needs_full(&self) -> bool;
}

/// [`parse_statements`] for one node ([`NodeScoped`]): the statements are read once; they
/// are parsed again in full only when the scoped parse needs it.
pub(crate) fn parse_statements_for<P: NodeScoped>(
    source: Source<'_>,
    node: &str,
) -> (P::Conf, Vec<PathBuf>, Vec<ConfError>) {
    let mut loader = Loader::default();
    loader.load(source);
    let run = |mut parser: P| {
        for s in &loader.stmts {
            parser.stmt(s);
        }
        parser.finish();
        parser
    };
    let mut parser = run(P::for_node(node));
    if parser.needs_full() {
        parser = run(P::default());
    }
    let (conf, found) = parser.into_parts();
    let mut errors = loader.errors;
    errors.extend(found);
    sort_errors(&mut errors, &loader.files);
    (conf, loader.files, errors)
}

/// Implements [`ConfFile`] for a file type whose statements the [`StmtParser`] `$parser`
/// parses: path and files read are set on the result.
macro_rules! statement_file {
    ($conf:ty, $parser:ty) => {
        impl $crate::conf::ConfFile for $conf {
            fn read(source: $crate::conf::Source<'_>) -> (Self, Vec<$crate::conf::ConfError>) {
                let (mut conf, files, errors) = $crate::conf::parse_statements::<$parser>(source);
                conf.path = source.origin().to_path_buf();
                conf.files = files;
                (conf, errors)
            }
        }
    };
    ($conf:ty, $parser:ty, for_node) => {
        $crate::conf::statement_file!($conf, $parser);

        // the parser keeps `scope` (the node asked about) and `unsure` (a full parse needed)
        impl $crate::conf::NodeScoped for $parser {
            fn for_node(node: &str) -> Self {
                Self {
                    scope: Some(node.to_string()),
                    ..Self::default()
                }
            }

            fn needs_full(&self) -> bool {
                self.unsure
            }
        }

        impl $conf {
            /// What node `node` needs of the file at `path` (its own records; see
            /// [`Self::read_for_node`]), with every error a full read finds.
            pub fn load_lenient_for_node(
                path: impl AsRef<std::path::Path>,
                node: &str,
            ) -> (Self, Vec<$crate::conf::ConfError>) {
                Self::read_for_node($crate::conf::Source::File(path.as_ref()), node)
            }

            /// What node `node` needs of `text` read as the content of `origin` (see
            /// [`Self::read_for_node`]), with every error a full parse finds.
            pub fn parse_str_lenient_for_node(
                text: &str,
                origin: impl AsRef<std::path::Path>,
                node: &str,
            ) -> (Self, Vec<$crate::conf::ConfError>) {
                Self::read_for_node(
                    $crate::conf::Source::Text {
                        text,
                        origin: origin.as_ref(),
                    },
                    node,
                )
            }

            /// Parses `source` for node `node`: its answers about `node` and the errors are
            /// those of [`ConfFile::read`](crate::ConfFile::read), but other nodes' host
            /// lists are not expanded (only checked), so the cost does not grow with the
            /// cluster's node count; the records of other nodes may be left out.
            pub fn read_for_node(
                source: $crate::conf::Source<'_>,
                node: &str,
            ) -> (Self, Vec<$crate::conf::ConfError>) {
                let (mut conf, files, errors) =
                    $crate::conf::parse_statements_for::<$parser>(source, node);
                conf.path = source.origin().to_path_buf();
                conf.files = files;
                (conf, errors)
            }
        }
    };
}
pub(crate) use statement_file;

/// Where a configuration file's text comes from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// Read from this path, with its includes.
    File(&'a Path),
    /// This text, read as the content of `origin` (includes resolve against its directory).
    Text {
        /// The file's content.
        text: &'a str,
        /// The path it is read as.
        origin: &'a Path,
    },
}

impl Source<'_> {
    /// The path the text is (or is read as) from.
    pub fn origin(&self) -> &Path {
        match self {
            Source::File(p) => p,
            Source::Text { origin, .. } => origin,
        }
    }
}

/// The one entry point of every Slurm file parser ([`crate::SlurmConf`], [`crate::GresConf`],
/// [`crate::PlugstackConf`]): each implements [`ConfFile::read`]; strict and lenient reading of
/// a path or a text come with it.
pub trait ConfFile: Sized {
    /// Parses `source`, keeping what could be parsed, plus every error found (sorted by file
    /// and line).
    fn read(source: Source<'_>) -> (Self, Vec<ConfError>);

    /// Reads and parses `path` (with its includes); fails on the first error.
    fn load(path: impl AsRef<Path>) -> Result<Self, ConfError> {
        first_error(Self::load_lenient(path))
    }

    /// Parses `text` as the content of `origin` (includes are resolved relative to
    /// `origin`'s directory); fails on the first error.
    fn parse_str(text: &str, origin: impl AsRef<Path>) -> Result<Self, ConfError> {
        first_error(Self::parse_str_lenient(text, origin))
    }

    /// Reads `path`, keeping what could be parsed, plus every error found (for `conf check`).
    fn load_lenient(path: impl AsRef<Path>) -> (Self, Vec<ConfError>) {
        Self::read(Source::File(path.as_ref()))
    }

    /// Parses `text` as the content of `origin`, keeping what could be parsed, plus every
    /// error found.
    fn parse_str_lenient(text: &str, origin: impl AsRef<Path>) -> (Self, Vec<ConfError>) {
        Self::read(Source::Text {
            text,
            origin: origin.as_ref(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &str) -> Vec<(String, String)> {
        parse_pairs(s)
            .0
            .into_iter()
            .map(|p| (p.key, p.value))
            .collect()
    }

    #[test]
    fn comments_continuations_escapes() {
        let text = "A=1 # c\n\n# only comment\nB=2 \\\n C=3\nD=x\\#y\nE=a\\\\\nF=\"q w\"\n";
        let lines = logical_lines(text);
        let got: Vec<(usize, &str)> = lines.iter().map(|(n, s)| (*n, s.as_str())).collect();
        assert_eq!(
            got,
            [
                (1, "A=1 "),
                (2, "\n"),
                (4, "B=2  C=3\n"),
                (6, "D=x#y\n"),
                (7, "E=a\\\n"),
                (8, "F=\"q w\"\n")
            ]
        );
    }

    #[test]
    fn continuation_without_space_glues() {
        let lines = logical_lines("NodeName=n1 CPUs=4\\\nRealMemory=5\n");
        assert_eq!(lines, [(1, "NodeName=n1 CPUs=4RealMemory=5\n".to_string())]);
        // Trailing blanks after the backslash are allowed; an even count is no continuation.
        assert_eq!(logical_lines("a=1 \\  \nb=2").len(), 1);
        assert_eq!(logical_lines("a=1\\\\\nb=2").len(), 2);
        // Continuation on the last line.
        assert_eq!(logical_lines("a=1 \\"), [(1, "a=1 ".to_string())]);
    }

    #[test]
    fn pair_syntax() {
        assert_eq!(pairs("Key=Value"), [("Key".into(), "Value".into())]);
        assert_eq!(pairs("  key = value  "), [("key".into(), "value".into())]);
        assert_eq!(
            pairs("Reason=\"a b\" X=1"),
            [("Reason".into(), "a b".into()), ("X".into(), "1".into())]
        );
        assert_eq!(pairs("CPUs=\"4\""), [("CPUs".into(), "4".into())]);
        assert_eq!(pairs("A=\"\""), [("A".into(), "".into())]);
        // A quote not followed by a blank is part of an unquoted value.
        let (p, left) = parse_pairs("F=\"a b\"c");
        assert_eq!(p[0].value, "\"a");
        assert_eq!(left.as_deref(), Some("b\"c"));
        // An empty value swallows the next pair, as in Slurm.
        assert_eq!(
            pairs("SlurmUser= ClusterName=x"),
            [("SlurmUser".into(), "ClusterName=x".into())]
        );
        let (p, left) = parse_pairs("A=1 garbage");
        assert_eq!(p.len(), 1);
        assert_eq!(left.as_deref(), Some("garbage"));
        let (p, _) = parse_pairs("A+=1");
        assert_eq!(p[0].op, Some('+'));
        assert!(parse_pairs("Key=").0.is_empty());
    }

    #[test]
    fn include_detection() {
        assert_eq!(
            include_directive("Include a.conf\n"),
            Some(("a.conf", "\n"))
        );
        assert_eq!(
            include_directive("include\ta.conf x"),
            Some(("a.conf", " x"))
        );
        assert_eq!(include_directive("Include=a"), None);
        assert_eq!(include_directive("  Include a"), None);
        assert_eq!(include_directive("Include \n"), Some(("", "")));
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        for s in [
            "\\",
            "\\\\\\",
            "\"",
            "a=\"",
            "=",
            "é=é",
            "a=\"é",
            "#\\",
            "include",
            "include é",
            "includé x",
            "inclué x",
        ] {
            let _ = logical_lines(s);
            let _ = parse_pairs(s);
            let _ = include_directive(s);
        }
    }
}

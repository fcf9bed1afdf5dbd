//! `.dockerignore` files and Docker's pattern rules (moby `patternmatcher`): `*` and `?` stay
//! within one path element, `**` spans any number of them, `[...]` classes, `\` escapes, `!`
//! re-includes, the last matching pattern wins, and a pattern that matches a directory excludes
//! everything below it.

use std::path::{Path, PathBuf};

use regex::Regex;

/// A malformed pattern.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    /// The pattern does not compile (e.g. an unterminated `[`).
    #[error("invalid .dockerignore pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern as written.
        pattern: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The ignore file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct Pattern {
    exclusion: bool,
    regex: Regex,
}

/// A compiled list of ignore patterns.
#[derive(Debug, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
}

/// Cleans a pattern like Go's `filepath.Clean` and drops a leading `/`.
fn clean(pattern: &str) -> String {
    let absolute = pattern.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if matches!(parts.last(), Some(p) if *p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    if joined.is_empty() {
        ".".into()
    } else {
        joined
    }
}

fn compile(pattern: &str) -> Result<Regex, String> {
    let mut re = String::from("^");
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        match ch {
            '*' => {
                if chars.get(i) == Some(&'*') {
                    i += 1;
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                    }
                    if i >= chars.len() {
                        re.push_str(".*");
                    } else {
                        re.push_str("(.*/)?");
                    }
                } else {
                    re.push_str("[^/]*");
                }
            }
            '?' => re.push_str("[^/]"),
            '\\' => {
                if let Some(n) = chars.get(i) {
                    re.push_str(&regex::escape(&n.to_string()));
                    i += 1;
                } else {
                    re.push_str("\\\\");
                }
            }
            '[' => {
                // Character class: copy up to the closing bracket, `!` negates like `^`.
                let mut class = String::from("[");
                if chars.get(i) == Some(&'!') || chars.get(i) == Some(&'^') {
                    class.push('^');
                    i += 1;
                }
                let mut closed = false;
                while let Some(&c) = chars.get(i) {
                    i += 1;
                    if c == ']' {
                        closed = true;
                        break;
                    }
                    if c == '\\' {
                        if let Some(&n) = chars.get(i) {
                            class.push_str(&regex::escape(&n.to_string()));
                            i += 1;
                        }
                        continue;
                    }
                    if c == '[' || c == '&' || c == '~' {
                        class.push('\\');
                    }
                    class.push(c);
                }
                if !closed {
                    return Err("syntax error in pattern".into());
                }
                class.push(']');
                re.push_str(&class);
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    Regex::new(&re).map_err(|e| e.to_string())
}

impl Matcher {
    /// Compiles patterns as read from a `.dockerignore` (already split into lines and trimmed).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, IgnoreError> {
        let mut out = Vec::new();
        for raw in patterns {
            let raw = raw.as_ref().trim();
            if raw.is_empty() {
                continue;
            }
            let (exclusion, body) = match raw.strip_prefix('!') {
                Some(b) => (true, b.trim()),
                None => (false, raw),
            };
            if body.is_empty() {
                return Err(IgnoreError::Pattern {
                    pattern: raw.to_string(),
                    reason: "illegal exclusion pattern: \"!\"".into(),
                });
            }
            let cleaned = clean(body);
            let regex = compile(&cleaned).map_err(|reason| IgnoreError::Pattern {
                pattern: raw.to_string(),
                reason,
            })?;
            out.push(Pattern { exclusion, regex });
        }
        Ok(Self { patterns: out })
    }

    /// Parses the text of a `.dockerignore` file (`#` comment lines, blank lines skipped).
    pub fn parse(text: &str) -> Result<Self, IgnoreError> {
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        Self::new(&lines)
    }

    /// Whether a context-relative path (with `/` separators) is excluded: the last pattern that
    /// matches the path or one of its parent directories decides.
    pub fn excluded(&self, path: &str) -> bool {
        let path = clean(path);
        let parents: Vec<&str> = path
            .char_indices()
            .filter(|(_, c)| *c == '/')
            .map(|(i, _)| &path[..i])
            .collect();
        let mut excluded = false;
        for p in &self.patterns {
            if excluded != p.exclusion {
                // Only a pattern that could flip the result needs checking.
                continue;
            }
            let matched = p.regex.is_match(&path) || parents.iter().any(|d| p.regex.is_match(d));
            if matched {
                excluded = !p.exclusion;
            }
        }
        excluded
    }

    /// True when there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

/// The ignore file that applies to a build: `<Dockerfile>.dockerignore` next to the Dockerfile
/// if present, else `.dockerignore` at the context root.
pub fn ignore_file(context: &Path, dockerfile: Option<&Path>) -> Option<PathBuf> {
    if let Some(df) = dockerfile {
        let mut name = df.as_os_str().to_os_string();
        name.push(".dockerignore");
        let specific = PathBuf::from(name);
        if specific.is_file() {
            return Some(specific);
        }
    }
    let general = context.join(".dockerignore");
    general.is_file().then_some(general)
}

/// Loads the matcher for a build (empty when there is no ignore file).
pub fn load(context: &Path, dockerfile: Option<&Path>) -> Result<Matcher, IgnoreError> {
    match ignore_file(context, dockerfile) {
        None => Ok(Matcher::default()),
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|source| IgnoreError::Io { path, source })?;
            Matcher::parse(&text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(patterns: &[&str]) -> Matcher {
        Matcher::new(patterns).unwrap()
    }

    /// Cases from moby's `patternmatcher` tests (`TestMatches`).
    #[test]
    fn moby_match_cases() {
        let cases: &[(&str, &str, bool)] = &[
            ("**", "file", true),
            ("**", "file/", true),
            ("**/", "file", true),
            ("**/", "file/", true),
            ("**", "/", true),
            ("**/", "/", true),
            ("**", "dir/file", true),
            ("**/", "dir/file", true),
            ("**", "dir/file/", true),
            ("**/", "dir/file/", true),
            ("**/**", "dir/file", true),
            ("**/**", "dir/file/", true),
            ("dir/**", "dir/file", true),
            ("dir/**", "dir/file/", true),
            ("dir/**", "dir/dir2/file", true),
            ("dir/**", "dir/dir2/file/", true),
            ("**/dir", "dir", true),
            ("**/dir", "dir/file", true),
            ("**/dir2/*", "dir/dir2/file", true),
            ("**/dir2/*", "dir/dir2/file/", true),
            ("**/dir2/**", "dir/dir2/dir3/file", true),
            ("**/dir2/**", "dir/dir2/dir3/file/", true),
            ("**file", "file", true),
            ("**file", "dir/file", true),
            ("**/file", "dir/file", true),
            ("**file", "dir/dir/file", true),
            ("**/file", "dir/dir/file", true),
            ("**/file*", "dir/dir/file", true),
            ("**/file*", "dir/dir/file.txt", true),
            ("**/file*txt", "dir/dir/file.txt", true),
            ("**/file*.txt", "dir/dir/file.txt", true),
            ("**/file*.txt*", "dir/dir/file.txt", true),
            ("**/**/*.txt", "dir/dir/file.txt", true),
            ("**/**/*.txt2", "dir/dir/file.txt", false),
            ("**/*.txt", "file.txt", true),
            ("**/**/*.txt", "file.txt", true),
            ("a**/*.txt", "a/file.txt", true),
            ("a**/*.txt", "a/dir/file.txt", true),
            ("a**/*.txt", "a/dir/dir/file.txt", true),
            ("a/*.txt", "a/dir/file.txt", false),
            ("a/*.txt", "a/file.txt", true),
            ("a/*.txt**", "a/file.txt", true),
            ("a[b-d]e", "ae", false),
            ("a[b-d]e", "ace", true),
            ("a[b-d]e", "aae", false),
            ("a[^b-d]e", "aze", true),
            (".*", ".foo", true),
            (".*", "foo", false),
            ("abc.def", "abcdef", false),
            ("abc.def", "abc.def", true),
            ("abc.def", "abcZdef", false),
            ("abc?def", "abcZdef", true),
            ("abc?def", "abcdef", false),
            ("a\\\\", "a\\", true),
            ("**/foo/bar", "foo/bar", true),
            ("**/foo/bar", "dir/foo/bar", true),
            ("**/foo/bar", "dir/dir2/foo/bar", true),
            ("abc/**", "abc", false),
            ("abc/**", "abc/def", true),
            ("abc/**", "abc/def/ghi", true),
            ("**/.foo", ".foo", true),
            ("**/.foo", "bar.foo", false),
            ("a(b)c/def", "a(b)c/def", true),
            ("a(b)c/def", "a(b)c/xyz", false),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
            (
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                true,
            ),
            (
                "dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                true,
            ),
        ];
        for (pattern, path, want) in cases {
            assert_eq!(
                m(&[pattern]).excluded(path),
                *want,
                "pattern {pattern:?} path {path:?}"
            );
        }
    }

    #[test]
    fn exclusions_and_order() {
        let matcher = m(&["*.md", "!README.md"]);
        assert!(matcher.excluded("CHANGES.md"));
        assert!(!matcher.excluded("README.md"));
        let matcher = m(&["!README.md", "*.md"]);
        assert!(matcher.excluded("README.md"), "last match wins");
        // A directory pattern excludes its contents; an exception re-includes one file.
        let matcher = m(&["docs", "!docs/keep.txt"]);
        assert!(matcher.excluded("docs/a.txt"));
        assert!(!matcher.excluded("docs/keep.txt"));
        assert!(matcher.excluded("docs"));
    }

    #[test]
    fn cleaning() {
        assert!(m(&["/foo"]).excluded("foo"));
        assert!(m(&["./foo"]).excluded("foo/bar"));
        assert!(m(&["foo/"]).excluded("foo/bar"));
        assert!(m(&["foo/../bar"]).excluded("bar"));
        assert!(!m(&["foo"]).excluded("dir/foo"), "not anchored anywhere");
        assert!(Matcher::new(&["!"]).is_err());
        assert!(Matcher::new(&["[abc"]).is_err());
        let parsed = Matcher::parse("# comment\n\n  node_modules  \n*.log\n").unwrap();
        assert!(parsed.excluded("node_modules/x/y.js"));
        assert!(parsed.excluded("debug.log"));
        assert!(!parsed.excluded("src/main.rs"));
    }

    #[test]
    fn dockerfile_specific_ignore_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "a\n").unwrap();
        let df = dir.path().join("app.Dockerfile");
        std::fs::write(&df, "FROM scratch\n").unwrap();
        assert_eq!(
            ignore_file(dir.path(), Some(&df)),
            Some(dir.path().join(".dockerignore"))
        );
        std::fs::write(dir.path().join("app.Dockerfile.dockerignore"), "b\n").unwrap();
        let matcher = load(dir.path(), Some(&df)).unwrap();
        assert!(matcher.excluded("b"));
        assert!(!matcher.excluded("a"));
    }
}

//! Variable substitution as BuildKit's `shell.Lex` does it: `$v`, `${v}`, `${v:-d}`, `${v-d}`,
//! `${v:+a}`, `${v+a}`, `${v:?m}`, `${v?m}`, `${v#p}`, `${v%p}`, single quotes (literal),
//! double quotes, and the escape character. Substitution applies only to the instructions listed
//! in [`EXPANDED`]; ARG scoping is modelled by [`Scope`].

use berth_store::Platform;
use std::collections::{BTreeMap, BTreeSet};

/// The instructions whose arguments Docker substitutes (RUN, CMD, ENTRYPOINT, SHELL, HEALTHCHECK
/// and ONBUILD triggers are left alone; ARG defaults are substituted too).
pub const EXPANDED: &[&str] = &[
    "ADD",
    "COPY",
    "ENV",
    "EXPOSE",
    "FROM",
    "LABEL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
    "ARG",
];

/// Build arguments that are usable without an `ARG` line.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Platform arguments BuildKit defines in the global scope (usable in FROM without `ARG`).
pub const PLATFORM_ARGS: &[&str] = &[
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
];

/// A substitution error (unterminated quote or brace, `${v:?}` on an unset variable, bad syntax).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExpandError(pub String);

/// The result of expanding one word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expanded {
    /// The word after substitution and quote removal.
    pub value: String,
    /// Names referenced but not set.
    pub unset: BTreeSet<String>,
}

/// Expands one word with `vars`; quotes are removed, the escape character escapes the next one.
pub fn expand_word(
    word: &str,
    vars: &BTreeMap<String, String>,
    escape: char,
) -> Result<Expanded, ExpandError> {
    let chars: Vec<char> = word.chars().collect();
    let mut lex = Lexer {
        chars: &chars,
        pos: 0,
        vars,
        escape,
        unset: BTreeSet::new(),
    };
    let value = lex.process(None)?;
    Ok(Expanded {
        value,
        unset: lex.unset,
    })
}

struct Lexer<'a> {
    chars: &'a [char],
    pos: usize,
    vars: &'a BTreeMap<String, String>,
    escape: char,
    unset: BTreeSet<String>,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Processes until `stop` (left for the caller to consume) or the end of the word.
    fn process(&mut self, stop: Option<char>) -> Result<String, ExpandError> {
        let mut out = String::new();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                return Ok(out);
            }
            self.pos += 1;
            match ch {
                '\'' => out.push_str(&self.single_quote()?),
                '"' => out.push_str(&self.double_quote()?),
                '$' => out.push_str(&self.dollar()?),
                c if c == self.escape => {
                    if let Some(n) = self.next() {
                        out.push(n);
                    }
                }
                c => out.push(c),
            }
        }
        if let Some(s) = stop {
            return Err(ExpandError(format!("syntax error: missing '{s}' in word")));
        }
        Ok(out)
    }

    fn single_quote(&mut self) -> Result<String, ExpandError> {
        let mut out = String::new();
        loop {
            match self.next() {
                None => {
                    return Err(ExpandError(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    ))
                }
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quote(&mut self) -> Result<String, ExpandError> {
        let mut out = String::new();
        loop {
            match self.next() {
                None => {
                    return Err(ExpandError(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    ))
                }
                Some('"') => return Ok(out),
                Some('$') => out.push_str(&self.dollar()?),
                Some(c) if c == self.escape => match self.peek() {
                    Some(n) if n == '"' || n == '$' || n == self.escape => {
                        self.pos += 1;
                        out.push(n);
                    }
                    _ => out.push(c),
                },
                Some(c) => out.push(c),
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        if let Some(c) = self.peek() {
            if c.is_ascii_digit() || c == '@' || c == '*' || c == '#' || c == '?' {
                // Positional and special parameters are one character.
                if c.is_ascii_digit() {
                    self.pos += 1;
                    name.push(c);
                }
                return name;
            }
        }
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                self.pos += 1;
            } else {
                break;
            }
        }
        name
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        match self.vars.get(name) {
            Some(v) => Some(v.clone()),
            None => {
                self.unset.insert(name.to_string());
                None
            }
        }
    }

    fn dollar(&mut self) -> Result<String, ExpandError> {
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(self.lookup(&name).unwrap_or_default());
        }
        self.pos += 1;
        let name = self.name();
        if name.is_empty() {
            return Err(ExpandError(
                "bad substitution: missing variable name".into(),
            ));
        }
        let op = self.next();
        match op {
            Some('}') => Ok(self.lookup(&name).unwrap_or_default()),
            Some(':') => {
                let modifier = self.next();
                let word = self.process(Some('}'))?;
                self.pos += 1;
                let value = self.lookup(&name);
                let empty = value.as_deref().unwrap_or("").is_empty();
                match modifier {
                    Some('-') => Ok(if empty {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    Some('+') => Ok(if empty { String::new() } else { word }),
                    Some('?') => {
                        if empty {
                            Err(ExpandError(if word.is_empty() {
                                format!("{name}: is not allowed to be unset")
                            } else {
                                format!("{name}: {word}")
                            }))
                        } else {
                            Ok(value.unwrap_or_default())
                        }
                    }
                    _ => Err(ExpandError(format!(
                        "unsupported modifier ({}) in substitution",
                        modifier.map(String::from).unwrap_or_default()
                    ))),
                }
            }
            Some(m @ ('-' | '+' | '?')) => {
                let word = self.process(Some('}'))?;
                self.pos += 1;
                let value = self.vars.get(&name).cloned();
                if value.is_none() && m != '+' {
                    self.unset.insert(name.clone());
                }
                match (m, value) {
                    ('-', None) => Ok(word),
                    ('-', Some(v)) => Ok(v),
                    ('+', None) => Ok(String::new()),
                    ('+', Some(_)) => Ok(word),
                    (_, None) => Err(ExpandError(if word.is_empty() {
                        format!("{name}: is not allowed to be unset")
                    } else {
                        format!("{name}: {word}")
                    })),
                    (_, Some(v)) => Ok(v),
                }
            }
            Some(m @ ('#' | '%')) => {
                let longest = self.peek() == Some(m);
                if longest {
                    self.pos += 1;
                }
                let pattern = self.process(Some('}'))?;
                self.pos += 1;
                let value = self.lookup(&name).unwrap_or_default();
                Ok(trim_pattern(&value, &pattern, m == '#', longest))
            }
            Some('/') => {
                let all = self.peek() == Some('/');
                if all {
                    self.pos += 1;
                }
                let pattern = self.process(Some('/'))?;
                self.pos += 1;
                let replacement = self.process(Some('}'))?;
                self.pos += 1;
                let value = self.lookup(&name).unwrap_or_default();
                if pattern.is_empty() {
                    return Ok(value);
                }
                Ok(if all {
                    value.replace(&pattern, &replacement)
                } else {
                    value.replacen(&pattern, &replacement, 1)
                })
            }
            _ => Err(ExpandError(format!(
                "missing '}}' or unsupported modifier in substitution of {name}"
            ))),
        }
    }
}

/// Shell glob (`*`, `?`, literal otherwise) matching of a whole string.
fn glob_match(pattern: &[char], text: &[char]) -> bool {
    match pattern.first() {
        None => text.is_empty(),
        Some('*') => (0..=text.len()).any(|i| glob_match(&pattern[1..], &text[i..])),
        Some('?') => !text.is_empty() && glob_match(&pattern[1..], &text[1..]),
        Some(c) => text.first() == Some(c) && glob_match(&pattern[1..], &text[1..]),
    }
}

/// `${v#p}`, `${v##p}`, `${v%p}`, `${v%%p}`.
fn trim_pattern(value: &str, pattern: &str, prefix: bool, longest: bool) -> String {
    let v: Vec<char> = value.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    let mut cuts: Vec<usize> = (0..=v.len()).collect();
    if longest == prefix {
        cuts.reverse();
    }
    for cut in cuts {
        if prefix && glob_match(&p, &v[..cut]) {
            return v[cut..].iter().collect();
        }
        if !prefix && glob_match(&p, &v[cut..]) {
            return v[..cut].iter().collect();
        }
    }
    value.to_string()
}

/// The variables visible at one point of a build: global ARGs before the first FROM, then per
/// stage the redeclared ARGs and ENVs.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// `--build-arg` values given on the command line.
    pub build_args: BTreeMap<String, String>,
    /// Global ARGs (declared before the first FROM) with their resolved values.
    pub global: BTreeMap<String, Option<String>>,
    /// The current stage's variables (ARGs declared in it and ENVs).
    pub stage: BTreeMap<String, String>,
    /// Names declared in the stage (even without a value).
    pub declared: BTreeSet<String>,
    /// The platform built for (the `TARGET*` arguments); this host's when `None`.
    pub target: Option<Platform>,
}

impl Scope {
    /// A scope with these `--build-arg` values.
    pub fn new(build_args: BTreeMap<String, String>) -> Self {
        Self {
            build_args,
            ..Self::default()
        }
    }

    /// Variables visible to FROM: global ARGs plus the platform arguments.
    pub fn from_vars(&self) -> BTreeMap<String, String> {
        let mut vars: BTreeMap<String, String> = PLATFORM_ARGS
            .iter()
            .map(|k| (k.to_string(), self.platform_arg(k)))
            .collect();
        for (k, v) in &self.global {
            if let Some(v) = v {
                vars.insert(k.clone(), v.clone());
            }
        }
        vars
    }

    /// Declares a global ARG (before the first FROM); the build-arg value wins over the default.
    pub fn declare_global(&mut self, name: &str, default: Option<String>) {
        let value = self.build_args.get(name).cloned().or(default);
        self.global.insert(name.to_string(), value);
    }

    /// Starts a new stage: stage variables are reset.
    pub fn enter_stage(&mut self) {
        self.stage.clear();
        self.declared.clear();
    }

    /// Declares an ARG in the stage: build-arg value, else the default, else the global value.
    pub fn declare_arg(&mut self, name: &str, default: Option<String>) {
        self.declared.insert(name.to_string());
        let value = self
            .build_args
            .get(name)
            .cloned()
            .or(default)
            .or_else(|| self.global.get(name).cloned().flatten())
            .or_else(|| {
                PLATFORM_ARGS
                    .contains(&name)
                    .then(|| self.platform_arg(name))
            });
        match value {
            Some(v) => {
                // ENV set earlier in the stage wins over an ARG of the same name.
                self.stage.entry(name.to_string()).or_insert(v);
            }
            None => {
                self.stage.remove(name);
            }
        }
    }

    /// The value of a platform argument: `BUILD*` this host's, `TARGET*` the target's.
    fn platform_arg(&self, name: &str) -> String {
        let host = Platform::host();
        let (platform, part) = match name.strip_prefix("TARGET") {
            Some(part) => (self.target.as_ref().unwrap_or(&host), part),
            None => (&host, name.trim_start_matches("BUILD")),
        };
        // BuildKit leaves out the variant every arm64 has.
        let variant = platform
            .variant
            .clone()
            .filter(|v| !(platform.architecture == "arm64" && v == "v8"));
        match part {
            "PLATFORM" => Platform {
                variant: variant.clone(),
                ..platform.clone()
            }
            .to_string(),
            "OS" => platform.os.clone(),
            "ARCH" => platform.architecture.clone(),
            "VARIANT" => variant.unwrap_or_default(),
            _ => String::new(),
        }
    }

    /// Sets an ENV variable in the stage.
    pub fn set_env(&mut self, name: &str, value: String) {
        self.declared.insert(name.to_string());
        self.stage.insert(name.to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ex(word: &str, v: &BTreeMap<String, String>) -> String {
        expand_word(word, v, '\\').unwrap().value
    }

    #[test]
    fn docker_substitution_forms() {
        let v = vars(&[("a", "x"), ("e", ""), ("path", "/usr/local/bin")]);
        assert_eq!(ex("$a", &v), "x");
        assert_eq!(ex("${a}", &v), "x");
        assert_eq!(ex("pre${a}post", &v), "prexpost");
        assert_eq!(ex("${b:-def}", &v), "def");
        assert_eq!(ex("${e:-def}", &v), "def");
        assert_eq!(ex("${e-def}", &v), "");
        assert_eq!(ex("${b-def}", &v), "def");
        assert_eq!(ex("${a:+alt}", &v), "alt");
        assert_eq!(ex("${e:+alt}", &v), "");
        assert_eq!(ex("${e+alt}", &v), "alt");
        assert_eq!(ex("${b+alt}", &v), "");
        assert_eq!(ex("${b:-${a}}", &v), "x");
        assert_eq!(ex("${path#/usr}", &v), "/local/bin");
        assert_eq!(ex("${path##*/}", &v), "bin");
        assert_eq!(ex("${path%/*}", &v), "/usr/local");
        assert_eq!(ex("${path%%/local*}", &v), "/usr");
        assert_eq!(ex("${path/local/share}", &v), "/usr/share/bin");
        assert!(expand_word("${b:?must be set}", &v, '\\').is_err());
        assert!(expand_word("${b", &v, '\\').is_err());
    }

    #[test]
    fn quotes_and_escapes() {
        let v = vars(&[("a", "x y")]);
        assert_eq!(ex("'$a'", &v), "$a");
        assert_eq!(ex("\"$a\"", &v), "x y");
        assert_eq!(ex("\\$a", &v), "$a");
        assert_eq!(ex("\"\\$a\"", &v), "$a");
        assert_eq!(ex("\"a\\b\"", &v), "a\\b");
        assert_eq!(ex("a\\ b", &v), "a b");
        assert_eq!(ex("$", &v), "$");
        assert_eq!(ex("a$", &v), "a$");
        assert_eq!(expand_word("`$a", &v, '`').unwrap().value, "$a");
        assert_eq!(expand_word("C:\\dir", &v, '`').unwrap().value, "C:\\dir");
        assert!(expand_word("'open", &v, '\\').is_err());
        assert!(expand_word("\"open", &v, '\\').is_err());
    }

    #[test]
    fn unset_tracking() {
        let v = vars(&[("a", "1")]);
        let e = expand_word("$a $b ${c:-x} ${d+y} '$e'", &v, '\\').unwrap();
        assert_eq!(
            e.unset.into_iter().collect::<Vec<_>>(),
            vec!["b".to_string(), "c".to_string()]
        );
    }

    #[test]
    fn arg_scoping() {
        let mut s = Scope::new(vars(&[("VERSION", "2")]));
        s.declare_global("VERSION", Some("1".into()));
        s.declare_global("BASE", Some("alpine".into()));
        assert_eq!(s.from_vars()["VERSION"], "2");
        assert_eq!(s.from_vars()["BASE"], "alpine");
        s.enter_stage();
        assert!(!s.stage.contains_key("BASE"), "globals need redeclaring");
        s.declare_arg("BASE", None);
        assert_eq!(s.stage["BASE"], "alpine");
        s.set_env("X", "env".into());
        s.declare_arg("X", Some("arg".into()));
        assert_eq!(s.stage["X"], "env");
        s.enter_stage();
        assert!(s.stage.is_empty());
    }
}

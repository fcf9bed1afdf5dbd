//! `build --check`: parse errors plus the static rules of BuildKit's linter, with BuildKit's rule
//! names and messages, and the structural errors a build would hit (unknown instruction, no FROM,
//! instructions before FROM, an invalid `--from`, a cycle of stages).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::expand::{expand_word, Scope, PROXY_ARGS};
use crate::parser::{parse_lenient, split_words, Command, CommandLine, Instruction, ParseError};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The build would fail.
    Error,
    /// A lint warning (BuildKit's `WARNING:`).
    Warning,
}

/// One problem found by [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// BuildKit rule name (`FromAsCasing`), or the error kind for hard errors.
    pub rule: String,
    /// Human message, worded like BuildKit.
    pub message: String,
    /// Dockerfile name as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Error or warning.
    pub severity: Severity,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.severity {
            Severity::Warning => write!(
                f,
                "WARNING: {} - {} (line {})",
                self.rule, self.message, self.line
            ),
            Severity::Error => write!(
                f,
                "ERROR: {}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            ),
        }
    }
}

/// All findings of one check, in line order.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Findings, sorted by line.
    pub findings: Vec<Finding>,
    /// `# check=error=true`: warnings fail the check too.
    pub warnings_are_errors: bool,
}

impl CheckReport {
    /// Number of errors.
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count()
    }

    /// Number of warnings.
    pub fn warnings(&self) -> usize {
        self.findings.len() - self.errors()
    }

    /// True when the check must exit non-zero.
    pub fn failed(&self) -> bool {
        self.errors() > 0 || (self.warnings_are_errors && self.warnings() > 0)
    }

    /// The findings of one rule.
    pub fn rule(&self, rule: &str) -> Vec<&Finding> {
        self.findings.iter().filter(|f| f.rule == rule).collect()
    }

    /// The text `build --check` prints: one line per finding, then a summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            out.push_str(&f.to_string());
            out.push('\n');
        }
        let (e, w) = (self.errors(), self.warnings());
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        out.push_str(&match (e, w) {
            (0, 0) => "Check complete, no warnings found.".to_string(),
            (0, w) => format!("Check complete, {} found!", plural(w, "warning")),
            (e, 0) => format!("Check complete, {} found!", plural(e, "error")),
            (e, w) => format!(
                "Check complete, {} and {} found!",
                plural(e, "error"),
                plural(w, "warning")
            ),
        });
        out.push('\n');
        out
    }
}

struct Stage {
    name: Option<String>,
    line: usize,
    column: usize,
    deps: Vec<(String, usize)>,
}

struct Linter<'a> {
    file: &'a str,
    findings: Vec<Finding>,
    skip: BTreeSet<String>,
    skip_all: bool,
}

impl Linter<'_> {
    fn warn(&mut self, rule: &str, line: usize, column: usize, message: String) {
        if self.skip_all || self.skip.contains(rule) {
            return;
        }
        self.findings.push(Finding {
            rule: rule.into(),
            message,
            file: self.file.to_string(),
            line,
            column,
            severity: Severity::Warning,
        });
    }

    fn error(&mut self, rule: &str, line: usize, column: usize, message: String) {
        self.findings.push(Finding {
            rule: rule.into(),
            message,
            file: self.file.to_string(),
            line,
            column,
            severity: Severity::Error,
        });
    }

    fn parse_error(&mut self, e: &ParseError) {
        let rule = if e.message.starts_with("unknown instruction") {
            "UnknownInstruction"
        } else {
            "SyntaxError"
        };
        self.error(rule, e.line, e.column, e.message.clone());
    }
}

/// BuildKit's secret name rule.
fn looks_secret(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let tokens: Vec<&str> = lower.split('_').collect();
    const DENY: &[&str] = &[
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    tokens.iter().any(|t| DENY.contains(t)) && !tokens.contains(&"public")
}

/// A loose Docker reference check (`name[:tag][@digest]`, lower-case path components).
fn valid_reference(reference: &str) -> bool {
    if reference.is_empty() || reference.chars().any(|c| c.is_whitespace()) {
        return false;
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (reference, None),
    };
    if let Some(d) = digest {
        if !d.contains(':') {
            return false;
        }
    }
    // A tag follows the last ':' after the last '/'.
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[slash..].rfind(':') {
        Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        if t.is_empty()
            || t.len() > 128
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return false;
        }
    }
    let mut parts = name.split('/');
    let first = parts.next().unwrap_or("");
    let host_like =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let path: Vec<&str> = if host_like {
        parts.collect()
    } else {
        name.split('/').collect()
    };
    !path.is_empty()
        && path.iter().all(|p| {
            !p.is_empty()
                && p.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                })
                && p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && p.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
        })
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Variables a base image commonly defines; not reported as undefined when the base is an image.
const IMAGE_ENV: &[&str] = &["PATH", "HOME", "HOSTNAME", "TERM", "LANG", "USER"];

/// Checks a Dockerfile without building it. `file` names it in messages; `build_args` are the
/// `--build-arg` values.
pub fn check(source: &str, file: &str, build_args: &BTreeMap<String, String>) -> CheckReport {
    let (dockerfile, errors) = parse_lenient(source);
    let mut lint = Linter {
        file,
        findings: Vec::new(),
        skip: BTreeSet::new(),
        skip_all: false,
    };
    let mut warnings_are_errors = false;
    if let Some(cfg) = &dockerfile.directives.check {
        for part in cfg.split(';') {
            match part.trim().split_once('=') {
                Some(("skip", rules)) => {
                    for r in rules.split(',') {
                        if r.trim() == "all" {
                            lint.skip_all = true;
                        }
                        lint.skip.insert(r.trim().to_string());
                    }
                }
                Some(("error", v)) => warnings_are_errors = v.trim() == "true",
                _ => {}
            }
        }
    }
    for e in &errors {
        lint.parse_error(e);
    }
    for &line in &dockerfile.empty_continuations {
        lint.warn(
            "NoEmptyContinuation",
            line,
            1,
            "Empty continuation line".into(),
        );
    }
    let escape = dockerfile.directives.escape;
    let insts = &dockerfile.instructions;

    // ConsistentInstructionCasing: the majority casing wins; mixed-case keywords always warn.
    let upper = insts
        .iter()
        .filter(|i| i.keyword == i.keyword.to_ascii_uppercase())
        .count();
    let lower = insts
        .iter()
        .filter(|i| i.keyword == i.keyword.to_ascii_lowercase())
        .count();
    let majority_upper = upper >= lower;
    for i in insts {
        let ok = if majority_upper {
            i.keyword == i.keyword.to_ascii_uppercase()
        } else {
            i.keyword == i.keyword.to_ascii_lowercase()
        };
        if !ok {
            lint.warn(
                "ConsistentInstructionCasing",
                i.line,
                i.column,
                format!(
                    "Command '{}' should match the case of the command majority ({})",
                    i.keyword,
                    if majority_upper {
                        "uppercase"
                    } else {
                        "lowercase"
                    }
                ),
            );
        }
    }

    let mut scope = Scope::new(build_args.clone());
    let mut defaults_only = Scope::default();
    let mut stages: Vec<Stage> = Vec::new();
    let mut stage_names: BTreeMap<String, usize> = BTreeMap::new();
    let mut from_external = false;
    let mut workdir_set = false;
    let mut seen_single: BTreeMap<&'static str, Vec<&Instruction>> = BTreeMap::new();

    let flush_single = |lint: &mut Linter, seen: &mut BTreeMap<&'static str, Vec<&Instruction>>| {
        for (name, list) in std::mem::take(seen) {
            if list.len() > 1 {
                for i in &list[..list.len() - 1] {
                    lint.warn(
                        "MultipleInstructionsDisallowed",
                        i.line,
                        i.column,
                        format!("Multiple {name} instructions should not be used in the same stage because only the last one will be used"),
                    );
                }
            }
        }
    };

    for inst in insts {
        let (line, col) = (inst.line, inst.column);
        if stages.is_empty() && !matches!(inst.command, Command::From { .. }) {
            match &inst.command {
                Command::Arg(decls) => {
                    for d in decls {
                        let vars = scope.from_vars();
                        let default = d.default.as_ref().map(|v| {
                            expand_word(v, &vars, escape)
                                .map(|e| e.value)
                                .unwrap_or_else(|_| v.clone())
                        });
                        scope.declare_global(&d.name, default.clone());
                        defaults_only.declare_global(&d.name, default);
                        if looks_secret(&d.name) {
                            lint.warn(
                                "SecretsUsedInArgOrEnv",
                                line,
                                col,
                                format!("Do not use ARG or ENV instructions for sensitive data (ARG {:?})", d.name),
                            );
                        }
                    }
                }
                _ => lint.error(
                    "NoStage",
                    line,
                    col,
                    format!(
                        "{} instruction before the first FROM: no build stage in current context",
                        inst.command.name()
                    ),
                ),
            }
            continue;
        }
        match &inst.command {
            Command::From {
                image,
                name,
                as_keyword,
            } => {
                flush_single(&mut lint, &mut seen_single);
                scope.enter_stage();
                workdir_set = false;
                let vars = scope.from_vars();
                let resolved = match expand_word(image, &vars, escape) {
                    Ok(e) => {
                        for u in &e.unset {
                            if !scope.global.contains_key(u) {
                                lint.warn(
                                    "UndefinedArgInFrom",
                                    line,
                                    col,
                                    format!("FROM argument '{u}' is not declared"),
                                );
                            }
                        }
                        e.value
                    }
                    Err(e) => {
                        lint.error("SyntaxError", line, col, e.0);
                        image.clone()
                    }
                };
                if image.contains('$') {
                    let defaults = defaults_only.from_vars();
                    let with_defaults = expand_word(image, &defaults, escape)
                        .map(|e| e.value)
                        .unwrap_or_default();
                    if with_defaults.is_empty()
                        || !(valid_reference(&with_defaults)
                            || stage_names.contains_key(&with_defaults.to_ascii_lowercase()))
                    {
                        lint.warn(
                            "InvalidDefaultArgInFrom",
                            line,
                            col,
                            format!("Default value for ARG {image} results in empty or invalid base image name"),
                        );
                    }
                }
                let lower_image = resolved.to_ascii_lowercase();
                let mut deps = Vec::new();
                if stage_names.contains_key(&lower_image) {
                    deps.push((lower_image.clone(), line));
                    from_external = false;
                } else if lower_image == "scratch" {
                    from_external = false;
                } else {
                    from_external = true;
                    if !resolved.is_empty() && !valid_reference(&resolved) {
                        lint.error(
                            "InvalidReference",
                            line,
                            col,
                            format!("base name ({resolved}) should not be blank and must be a valid reference"),
                        );
                    }
                }
                if resolved.is_empty() {
                    lint.error(
                        "InvalidReference",
                        line,
                        col,
                        "base name (empty) should not be blank".into(),
                    );
                }
                if let Some(platform) = inst.flag("platform").flatten() {
                    if platform == "$TARGETPLATFORM" || platform == "${TARGETPLATFORM}" {
                        lint.warn("RedundantTargetPlatform", line, col, "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior".into());
                    } else if !platform.contains('$') {
                        let named_for_it = name.as_ref().is_some_and(|n| {
                            let n = n.to_ascii_lowercase();
                            platform
                                .split('/')
                                .skip(1)
                                .any(|part| n.contains(&part.to_ascii_lowercase()))
                        });
                        if !named_for_it {
                            lint.warn(
                                "FromPlatformFlagConstDisallowed",
                                line,
                                col,
                                format!("FROM --platform flag should not use constant value {platform:?}"),
                            );
                        }
                    }
                }
                if let (Some(n), Some(kw)) = (name, as_keyword) {
                    let from_upper = inst.keyword == inst.keyword.to_ascii_uppercase();
                    let as_upper = kw == &kw.to_ascii_uppercase();
                    let from_lower = inst.keyword == inst.keyword.to_ascii_lowercase();
                    let as_lower = kw == &kw.to_ascii_lowercase();
                    if (from_upper && !as_upper) || (from_lower && !as_lower) {
                        lint.warn(
                            "FromAsCasing",
                            line,
                            col,
                            format!(
                                "'{kw}' and '{}' keywords' casing do not match",
                                inst.keyword
                            ),
                        );
                    }
                    if n != &n.to_ascii_lowercase() {
                        lint.warn(
                            "StageNameCasing",
                            line,
                            col,
                            format!("Stage name '{n}' should be lowercase"),
                        );
                    }
                    let lower = n.to_ascii_lowercase();
                    if lower == "scratch" || lower == "context" {
                        lint.warn(
                            "ReservedStageName",
                            line,
                            col,
                            format!("Stage name should not use the same name as reserved stage {lower:?}"),
                        );
                    }
                    let message =
                        format!("Duplicate stage name {lower:?}, stage names should be unique");
                    match stage_names.entry(lower) {
                        std::collections::btree_map::Entry::Occupied(_) => {
                            lint.warn("DuplicateStageName", line, col, message)
                        }
                        std::collections::btree_map::Entry::Vacant(slot) => {
                            slot.insert(stages.len());
                        }
                    }
                }
                stages.push(Stage {
                    name: name.as_ref().map(|n| n.to_ascii_lowercase()),
                    line,
                    column: col,
                    deps,
                });
            }
            other => {
                lint_stage_instruction(
                    &mut lint,
                    inst,
                    other,
                    &mut scope,
                    escape,
                    from_external,
                    &mut workdir_set,
                );
                match other {
                    Command::Cmd(_) => seen_single.entry("CMD").or_default().push(inst),
                    Command::Entrypoint(_) => {
                        seen_single.entry("ENTRYPOINT").or_default().push(inst)
                    }
                    Command::Healthcheck(_) => {
                        seen_single.entry("HEALTHCHECK").or_default().push(inst)
                    }
                    _ => {}
                }
                // Stage references: COPY --from and RUN --mount from=.
                let mut refs = Vec::new();
                if let Command::Copy(_) = other {
                    if let Some(Some(from)) = inst.flag("from") {
                        refs.push(from.to_string());
                    }
                }
                if let Command::Run(_) = other {
                    for f in inst.flags.iter().filter(|f| f.name == "mount") {
                        for field in f.value.as_deref().unwrap_or("").split(',') {
                            if let Some(("from", v)) = field.split_once('=') {
                                refs.push(v.to_string());
                            }
                        }
                    }
                }
                for r in refs {
                    let vars = scope.from_vars();
                    let r = expand_word(&r, &vars, escape).map(|e| e.value).unwrap_or(r);
                    let lower = r.to_ascii_lowercase();
                    let current = stages.len() - 1;
                    if let Ok(index) = lower.parse::<usize>() {
                        if index >= current {
                            lint.error(
                                "UnknownStage",
                                line,
                                col,
                                format!("invalid from flag value {r}: stage index {index} is not an earlier stage (stages so far: {current})"),
                            );
                        } else if let Some(s) = stages.last_mut() {
                            s.deps.push((format!("#{index}"), line));
                        }
                    } else if stage_names.contains_key(&lower)
                        || insts.iter().any(|i| matches!(&i.command, Command::From { name: Some(n), .. } if n.eq_ignore_ascii_case(&lower)))
                    {
                        if let Some(s) = stages.last_mut() {
                            s.deps.push((lower, line));
                        }
                    } else if !valid_reference(&r) {
                        lint.error(
                            "UnknownStage",
                            line,
                            col,
                            format!("invalid from flag value {r}: not a build stage and not a valid image reference"),
                        );
                    }
                }
            }
        }
    }
    flush_single(&mut lint, &mut seen_single);

    if stages.is_empty() && errors.is_empty() {
        lint.error(
            "NoStage",
            1,
            1,
            "dockerfile contains no stages to build: FROM is missing".into(),
        );
    }

    // Cycles between stages (via COPY --from / RUN --mount from= forward references).
    let index_of = |name: &str| -> Option<usize> {
        if let Some(n) = name.strip_prefix('#') {
            return n.parse().ok();
        }
        stages.iter().position(|s| s.name.as_deref() == Some(name))
    };
    let mut state = vec![0u8; stages.len()];
    let mut reported = false;
    for start in 0..stages.len() {
        if reported {
            break;
        }
        // Iterative DFS: 1 = on the path, 2 = done.
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        if state[start] != 0 {
            continue;
        }
        state[start] = 1;
        while let Some((node, next)) = stack.pop() {
            let deps = &stages[node].deps;
            if next < deps.len() {
                stack.push((node, next + 1));
                if let Some(dep) = index_of(&deps[next].0) {
                    match state[dep] {
                        0 => {
                            state[dep] = 1;
                            stack.push((dep, 0));
                        }
                        1 => {
                            let s = &stages[dep];
                            let name = s.name.clone().unwrap_or_else(|| format!("{dep}"));
                            lint.error(
                                "CircularDependency",
                                s.line,
                                s.column,
                                format!("circular dependency detected on stage: {name}"),
                            );
                            reported = true;
                            break;
                        }
                        _ => {}
                    }
                }
            } else {
                state[node] = 2;
            }
        }
    }

    let mut findings = lint.findings;
    findings.sort_by_key(|f| (f.line, f.severity));
    CheckReport {
        findings,
        warnings_are_errors,
    }
}

/// Checks one instruction inside a stage and updates the scope.
fn lint_stage_instruction(
    lint: &mut Linter,
    inst: &Instruction,
    command: &Command,
    scope: &mut Scope,
    escape: char,
    from_external: bool,
    workdir_set: &mut bool,
) {
    let (line, col) = (inst.line, inst.column);
    let expand = |lint: &mut Linter, scope: &Scope, word: &str| -> String {
        let mut vars = scope.stage.clone();
        for p in PROXY_ARGS {
            if let Some(v) = scope.build_args.get(*p) {
                vars.entry(p.to_string()).or_insert_with(|| v.clone());
            }
        }
        match expand_word(word, &vars, escape) {
            Ok(e) => {
                for u in e.unset {
                    if scope.declared.contains(&u)
                        || PROXY_ARGS.contains(&u.as_str())
                        || (from_external && IMAGE_ENV.contains(&u.as_str()))
                    {
                        continue;
                    }
                    let hint = scope
                        .declared
                        .iter()
                        .map(|d| (levenshtein(d, &u), d))
                        .filter(|(d, _)| *d <= 2)
                        .min()
                        .map(|(_, d)| format!(" (did you mean ${d}?)"))
                        .unwrap_or_default();
                    lint.warn(
                        "UndefinedVar",
                        line,
                        col,
                        format!("Usage of undefined variable '${u}'{hint}"),
                    );
                }
                e.value
            }
            Err(e) => {
                lint.error("SyntaxError", line, col, e.0);
                word.to_string()
            }
        }
    };
    match command {
        Command::Maintainer(_) => lint.warn(
            "MaintainerDeprecated",
            line,
            col,
            "Maintainer instruction is deprecated in favor of using label".into(),
        ),
        Command::Cmd(CommandLine::Shell(_)) | Command::Entrypoint(CommandLine::Shell(_)) => {
            lint.warn(
                "JSONArgsRecommended",
                line,
                col,
                format!(
                    "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                    command.name()
                ),
            )
        }
        Command::Env(pairs) | Command::Label(pairs) => {
            let name = command.name();
            if pairs.iter().any(|p| p.legacy) {
                lint.warn(
                    "LegacyKeyValueFormat",
                    line,
                    col,
                    format!("\"{name} key=value\" should be used instead of legacy \"{name} key value\" format"),
                );
            }
            for p in pairs {
                let key = expand(lint, scope, &p.key);
                let value = expand(lint, scope, &p.value);
                if name == "ENV" {
                    if looks_secret(&key) {
                        lint.warn(
                            "SecretsUsedInArgOrEnv",
                            line,
                            col,
                            format!("Do not use ARG or ENV instructions for sensitive data (ENV {key:?})"),
                        );
                    }
                    scope.set_env(&key, value);
                }
            }
        }
        Command::Arg(decls) => {
            for d in decls {
                let default = d.default.as_ref().map(|v| expand(lint, scope, v));
                if looks_secret(&d.name) {
                    lint.warn(
                        "SecretsUsedInArgOrEnv",
                        line,
                        col,
                        format!(
                            "Do not use ARG or ENV instructions for sensitive data (ARG {:?})",
                            d.name
                        ),
                    );
                }
                scope.declare_arg(&d.name, default);
            }
        }
        Command::Expose(ports) => {
            for p in ports {
                let p = expand(lint, scope, p);
                if p.contains(':') {
                    lint.warn(
                        "ExposeInvalidFormat",
                        line,
                        col,
                        format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{p}'"),
                    );
                }
                if let Some((_, proto)) = p.split_once('/') {
                    if proto != proto.to_ascii_lowercase() {
                        lint.warn(
                            "ExposeProtoCasing",
                            line,
                            col,
                            format!("Defined protocol '{p}' in EXPOSE instruction should be lowercase"),
                        );
                    }
                }
            }
        }
        Command::Workdir(dir) => {
            let dir = expand(lint, scope, dir);
            if !dir.starts_with('/') && !*workdir_set {
                lint.warn(
                    "WorkdirRelativePath",
                    line,
                    col,
                    format!(
                        "Relative workdir {dir:?} can have unexpected results if the base image changes"
                    ),
                );
            }
            *workdir_set = true;
        }
        Command::User(u) | Command::Stopsignal(u) => {
            expand(lint, scope, u);
        }
        Command::Volume(list) => {
            for v in list {
                for w in split_words(v, escape) {
                    expand(lint, scope, &w);
                }
            }
        }
        Command::Add(t) | Command::Copy(t) => {
            for w in t.sources.iter().chain(std::iter::once(&t.dest)) {
                if w.starts_with("<<") {
                    continue;
                }
                expand(lint, scope, w);
            }
            for f in &inst.flags {
                if matches!(f.name.as_str(), "chown" | "chmod") {
                    if let Some(v) = &f.value {
                        expand(lint, scope, v);
                    }
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;

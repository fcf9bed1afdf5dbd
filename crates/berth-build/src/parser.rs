//! The Dockerfile parser, following BuildKit's `frontend/dockerfile/parser` and `instructions`
//! packages: parser directives, comments, line continuations (with comments and blank lines inside
//! them), heredocs, flag extraction, exec (JSON) versus shell form, and every instruction's
//! argument shape. Nothing is expanded here: words are kept as written, [`crate::expand`]
//! substitutes variables where Docker does.

use std::fmt;

/// A syntax error in a Dockerfile, with the 1-based line and column it refers to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dockerfile parse error on line {line}: {message}")]
pub struct ParseError {
    /// 1-based line of the instruction (or directive) in error.
    pub line: usize,
    /// 1-based column, 1 when only the line is known.
    pub column: usize,
    /// What is wrong, worded like BuildKit.
    pub message: String,
}

impl ParseError {
    fn new(line: usize, column: usize, message: impl Into<String>) -> Self {
        Self {
            line,
            column,
            message: message.into(),
        }
    }
}

/// The parser directives found at the top of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// `# syntax=` frontend image, if any.
    pub syntax: Option<String>,
    /// The escape character (`\` or `` ` ``).
    pub escape: char,
    /// `# check=` lint configuration, if any.
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Self {
            syntax: None,
            escape: '\\',
            check: None,
        }
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, Default)]
pub struct Dockerfile {
    /// Parser directives.
    pub directives: Directives,
    /// Instructions in file order.
    pub instructions: Vec<Instruction>,
    /// Start lines of instructions whose continuation contained an empty line.
    pub empty_continuations: Vec<usize>,
}

/// One `--name[=value]` flag of an instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// Flag name without the dashes.
    pub name: String,
    /// Value after `=`, if any.
    pub value: Option<String>,
}

/// A heredoc attached to an instruction (`<<EOF` … `EOF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// Delimiter word, unquoted.
    pub name: String,
    /// Body, one `\n` after each line; leading tabs removed for `<<-`.
    pub content: String,
    /// False when the delimiter was quoted: no variable expansion in the body.
    pub expand: bool,
    /// True for `<<-` (leading tabs stripped).
    pub chomp: bool,
    /// File descriptor prefix (`3<<EOF`), if any.
    pub fd: Option<u32>,
}

/// Exec (JSON) or shell form of RUN, CMD, ENTRYPOINT and HEALTHCHECK CMD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    /// JSON array form: no shell, no substitution.
    Exec(Vec<String>),
    /// Shell form: run with the stage's SHELL.
    Shell(String),
}

/// A `key=value` pair of ENV or LABEL, or the legacy `ENV key value` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// Key as written (quotes kept; expansion removes them).
    pub key: String,
    /// Value as written (quotes kept).
    pub value: String,
    /// True for the legacy whitespace-separated form.
    pub legacy: bool,
}

/// One name of an ARG instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    /// Argument name.
    pub name: String,
    /// Default value as written, if any.
    pub default: Option<String>,
}

/// HEALTHCHECK argument: NONE or a command (options are in the instruction's flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// `HEALTHCHECK NONE`: disable the base image's check.
    None,
    /// `HEALTHCHECK [options] CMD …`.
    Cmd(CommandLine),
}

/// Sources and destination of ADD or COPY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Sources as written (heredoc sources as `<<NAME`).
    pub sources: Vec<String>,
    /// Destination as written.
    pub dest: String,
    /// True when written in JSON form.
    pub json: bool,
}

/// An instruction with its arguments, unexpanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `FROM [--platform=…] image [AS name]`.
    From {
        /// Base image or stage reference.
        image: String,
        /// Stage name (as written).
        name: Option<String>,
        /// The `AS` keyword as written, for the casing check.
        as_keyword: Option<String>,
    },
    /// `RUN`.
    Run(CommandLine),
    /// `CMD`.
    Cmd(CommandLine),
    /// `ENTRYPOINT`.
    Entrypoint(CommandLine),
    /// `LABEL k=v …`.
    Label(Vec<KeyValue>),
    /// `ENV k=v …` or `ENV k v`.
    Env(Vec<KeyValue>),
    /// `MAINTAINER name`.
    Maintainer(String),
    /// `EXPOSE port[/proto] …`.
    Expose(Vec<String>),
    /// `ADD`.
    Add(Transfer),
    /// `COPY`.
    Copy(Transfer),
    /// `VOLUME` (JSON or plain list).
    Volume(Vec<String>),
    /// `USER user[:group]`.
    User(String),
    /// `WORKDIR path`.
    Workdir(String),
    /// `ARG name[=default] …`.
    Arg(Vec<ArgDecl>),
    /// `ONBUILD <instruction>`.
    Onbuild(Box<Instruction>),
    /// `STOPSIGNAL signal`.
    Stopsignal(String),
    /// `HEALTHCHECK`.
    Healthcheck(Health),
    /// `SHELL ["exe", "arg"]`.
    Shell(Vec<String>),
}

impl Command {
    /// The canonical upper-case instruction name.
    pub fn name(&self) -> &'static str {
        match self {
            Command::From { .. } => "FROM",
            Command::Run(_) => "RUN",
            Command::Cmd(_) => "CMD",
            Command::Entrypoint(_) => "ENTRYPOINT",
            Command::Label(_) => "LABEL",
            Command::Env(_) => "ENV",
            Command::Maintainer(_) => "MAINTAINER",
            Command::Expose(_) => "EXPOSE",
            Command::Add(_) => "ADD",
            Command::Copy(_) => "COPY",
            Command::Volume(_) => "VOLUME",
            Command::User(_) => "USER",
            Command::Workdir(_) => "WORKDIR",
            Command::Arg(_) => "ARG",
            Command::Onbuild(_) => "ONBUILD",
            Command::Stopsignal(_) => "STOPSIGNAL",
            Command::Healthcheck(_) => "HEALTHCHECK",
            Command::Shell(_) => "SHELL",
        }
    }
}

/// One instruction with its source position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// The keyword exactly as written (for the casing checks).
    pub keyword: String,
    /// Typed arguments.
    pub command: Command,
    /// Flags (`--from=…`, `--mount=…`), in order.
    pub flags: Vec<Flag>,
    /// Heredocs, in the order they were opened.
    pub heredocs: Vec<Heredoc>,
    /// 1-based first line.
    pub line: usize,
    /// 1-based last line (continuations and heredocs included).
    pub end_line: usize,
    /// 1-based column of the keyword.
    pub column: usize,
    /// The logical line after continuation joining, for messages.
    pub original: String,
}

impl Instruction {
    /// The value of a flag, if given (`Some(None)` for a flag without value).
    pub fn flag(&self, name: &str) -> Option<Option<&str>> {
        self.flags
            .iter()
            .rev()
            .find(|f| f.name == name)
            .map(|f| f.value.as_deref())
    }
}

impl fmt::Display for Instruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

/// The instructions Docker knows, lower case.
pub const INSTRUCTIONS: &[&str] = &[
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// Parses a Dockerfile; the first error stops parsing.
pub fn parse(source: &str) -> Result<Dockerfile, ParseError> {
    let (file, mut errors) = parse_lenient(source);
    if errors.is_empty() {
        Ok(file)
    } else {
        Err(errors.remove(0))
    }
}

/// Parses a Dockerfile, collecting every instruction-level error instead of stopping at the first
/// one (a broken directive or an unterminated heredoc still ends parsing). The returned file holds
/// the instructions that parsed.
pub fn parse_lenient(source: &str) -> (Dockerfile, Vec<ParseError>) {
    let mut file = Dockerfile::default();
    let mut errors = Vec::new();
    let lines: Vec<&str> = source.split('\n').map(trim_newline).collect();
    let mut i = 0;

    // Parser directives: `# key=value` lines at the very top; anything else ends them.
    let mut seen = Vec::new();
    while i < lines.len() {
        let Some((key, value)) = directive(lines[i]) else {
            break;
        };
        if seen.contains(&key) {
            errors.push(ParseError::new(
                i + 1,
                1,
                format!("only one {key} parser directive can be used"),
            ));
            return (file, errors);
        }
        match key.as_str() {
            "escape" => match value.as_str() {
                "\\" => file.directives.escape = '\\',
                "`" => file.directives.escape = '`',
                other => {
                    errors.push(ParseError::new(
                        i + 1,
                        1,
                        format!("invalid escape token '{other}' does not match ` or \\"),
                    ));
                    return (file, errors);
                }
            },
            "syntax" => file.directives.syntax = Some(value),
            "check" => file.directives.check = Some(value),
            _ => {}
        }
        seen.push(key);
        i += 1;
    }
    let escape = file.directives.escape;

    while i < lines.len() {
        let raw = lines[i];
        i += 1;
        let start_line = i;
        let first = raw.trim_start_matches([' ', '\t']);
        if first.starts_with('#') {
            continue;
        }
        let column = raw.len() - first.len() + 1;
        let (mut line, mut done) = trim_continuation(first, escape);
        if done && line.trim().is_empty() {
            continue;
        }
        let mut empty_continuation = false;
        while !done && i < lines.len() {
            let next = lines[i];
            i += 1;
            let stripped = next.trim_start_matches([' ', '\t']);
            if stripped.starts_with('#') {
                continue;
            }
            if stripped.is_empty() {
                empty_continuation = true;
                continue;
            }
            let (part, end) = trim_continuation(next, escape);
            line.push_str(&part);
            done = end;
        }
        if empty_continuation {
            file.empty_continuations.push(start_line);
        }
        let mut end_line = i;
        let line = line.trim().to_string();
        // Heredocs: bodies follow the instruction line, in the order they were opened.
        let keyword = line
            .split(|c: char| c.is_ascii_whitespace())
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let mut heredocs = Vec::new();
        if matches!(keyword.as_str(), "run" | "copy" | "add") {
            for mut doc in heredocs_in(&line) {
                let mut terminated = false;
                while i < lines.len() {
                    let body_line = lines[i];
                    i += 1;
                    let candidate = if doc.chomp {
                        body_line.trim_start_matches('\t')
                    } else {
                        body_line
                    };
                    if candidate == doc.name {
                        terminated = true;
                        break;
                    }
                    doc.content.push_str(candidate);
                    doc.content.push('\n');
                }
                if !terminated {
                    errors.push(ParseError::new(
                        start_line,
                        column,
                        format!("unterminated heredoc {}", doc.name),
                    ));
                    return (file, errors);
                }
                heredocs.push(doc);
            }
            end_line = i;
        }
        match parse_instruction(&line, escape, start_line, column) {
            Ok(mut inst) => {
                inst.end_line = end_line;
                inst.heredocs = heredocs;
                file.instructions.push(inst);
            }
            Err(e) => errors.push(e),
        }
    }
    if file.instructions.is_empty() && errors.is_empty() {
        errors.push(ParseError::new(1, 1, "file with no instructions"));
    }
    (file, errors)
}

fn trim_newline(line: &str) -> &str {
    line.strip_suffix('\r').unwrap_or(line)
}

/// `# key=value` as a parser directive (key lower-cased), BuildKit's `^#[ \t]*([a-zA-Z][a-zA-Z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*$`.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('#')?.trim_start_matches([' ', '\t']);
    let (key, value) = rest.split_once('=')?;
    let key = key.trim_end_matches([' ', '\t']);
    let mut chars = key.chars();
    if !chars.next()?.is_ascii_alphabetic() || !chars.all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let value = value.trim_matches([' ', '\t']);
    if value.is_empty() {
        return None;
    }
    Some((key.to_ascii_lowercase(), value.to_string()))
}

/// Removes a trailing escape character (and blanks after it); returns whether the line ends here.
fn trim_continuation(line: &str, escape: char) -> (String, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(rest) => (rest.to_string(), false),
        None => (line.to_string(), true),
    }
}

/// Splits on blanks outside quotes, keeping quotes and escapes (BuildKit's `parseWords`).
pub fn split_words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for ch in text.chars() {
        if escaped {
            word.push(ch);
            escaped = false;
            continue;
        }
        if ch == escape && quote != Some('\'') {
            escaped = true;
            word.push(ch);
            continue;
        }
        match quote {
            Some(q) if ch == q => {
                quote = None;
                word.push(ch);
            }
            Some(_) => word.push(ch),
            None if ch == '\'' || ch == '"' => {
                quote = Some(ch);
                word.push(ch);
            }
            None if ch.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            None => word.push(ch),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Removes the outer quotes of a heredoc delimiter; returns (name, quoted).
fn unquote_delimiter(word: &str) -> (String, bool) {
    let mut out = String::new();
    let mut quoted = false;
    let mut quote: Option<char> = None;
    let mut chars = word.chars();
    while let Some(ch) = chars.next() {
        match quote {
            Some(q) if ch == q => quote = None,
            Some(_) => out.push(ch),
            None if ch == '\'' || ch == '"' => {
                quote = Some(ch);
                quoted = true;
            }
            None if ch == '\\' => {
                quoted = true;
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            None => out.push(ch),
        }
    }
    (out, quoted)
}

/// The heredocs opened on an instruction line (`<<EOF`, `<<-EOF`, `<<"EOF"`, `3<<EOF`).
fn heredocs_in(line: &str) -> Vec<Heredoc> {
    let mut docs = Vec::new();
    for word in split_words(line, '\\') {
        let digits = word.chars().take_while(|c| c.is_ascii_digit()).count();
        let Some(rest) = word[digits..].strip_prefix("<<") else {
            continue;
        };
        let (chomp, rest) = match rest.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, rest),
        };
        if rest.is_empty() || rest.contains('<') {
            continue;
        }
        let (name, quoted) = unquote_delimiter(rest);
        if name.is_empty() {
            continue;
        }
        docs.push(Heredoc {
            name,
            content: String::new(),
            expand: !quoted,
            chomp,
            fd: if digits > 0 {
                word[..digits].parse().ok()
            } else {
                None
            },
        });
    }
    docs
}

/// Splits leading `--flag[=value]` words off the arguments (BuildKit's `extractBuilderFlags`).
fn extract_flags(rest: &str, escape: char) -> (Vec<Flag>, String) {
    let mut flags = Vec::new();
    let mut rest = rest.trim_start();
    loop {
        if !rest.starts_with("--") {
            break;
        }
        // The flag word ends at the first blank outside quotes.
        let mut end = rest.len();
        let mut quote: Option<char> = None;
        let mut escaped = false;
        for (idx, ch) in rest.char_indices() {
            if escaped {
                escaped = false;
                continue;
            }
            if ch == escape && quote != Some('\'') {
                escaped = true;
                continue;
            }
            match quote {
                Some(q) if ch == q => quote = None,
                Some(_) => {}
                None if ch == '"' || ch == '\'' => quote = Some(ch),
                None if ch.is_whitespace() => {
                    end = idx;
                    break;
                }
                None => {}
            }
        }
        let word = &rest[2..end];
        rest = rest[end..].trim_start();
        if word.is_empty() {
            // A lone `--` ends the flags.
            break;
        }
        let (name, value) = match word.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(strip_quotes(v))),
            None => (word.to_string(), None),
        };
        flags.push(Flag { name, value });
    }
    (flags, rest.to_string())
}

fn strip_quotes(v: &str) -> String {
    let b = v.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

/// A JSON array of strings, if the text is one (Docker's exec form detection).
pub fn json_array(text: &str) -> Option<Vec<String>> {
    let t = text.trim();
    if !t.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(t).ok()
}

fn command_line(text: &str) -> CommandLine {
    match json_array(text) {
        Some(v) => CommandLine::Exec(v),
        None => CommandLine::Shell(text.to_string()),
    }
}

const RUN_FLAGS: &[&str] = &["mount", "network", "security"];
const COPY_FLAGS: &[&str] = &["from", "chown", "chmod", "link", "parents", "exclude"];
const ADD_FLAGS: &[&str] = &[
    "chown",
    "chmod",
    "link",
    "keep-git-dir",
    "checksum",
    "exclude",
    "unpack",
];
const HEALTH_FLAGS: &[&str] = &[
    "interval",
    "timeout",
    "start-period",
    "start-interval",
    "retries",
];

/// Parses one logical line into an instruction.
fn parse_instruction(
    line: &str,
    escape: char,
    line_no: usize,
    column: usize,
) -> Result<Instruction, ParseError> {
    let err = |m: String| ParseError::new(line_no, column, m);
    let (keyword, rest) = match line.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((k, r)) => (k, r.trim()),
        None => (line, ""),
    };
    let lower = keyword.to_ascii_lowercase();
    if !INSTRUCTIONS.contains(&lower.as_str()) {
        return Err(err(format!(
            "unknown instruction: {keyword}{}",
            suggest(&lower)
        )));
    }
    let (flags, args) = match lower.as_str() {
        "from" | "run" | "copy" | "add" | "healthcheck" => extract_flags(rest, escape),
        _ => (Vec::new(), rest.to_string()),
    };
    let allowed: &[&str] = match lower.as_str() {
        "from" => &["platform"],
        "run" => RUN_FLAGS,
        "copy" => COPY_FLAGS,
        "add" => ADD_FLAGS,
        "healthcheck" => HEALTH_FLAGS,
        _ => &[],
    };
    for flag in &flags {
        if !allowed.contains(&flag.name.as_str()) {
            return Err(err(format!("unknown flag: {}", flag.name)));
        }
    }
    let name = lower.to_ascii_uppercase();
    let need = |n: usize, what: &str| -> Result<(), ParseError> {
        if n == 0 {
            Err(err(format!("{name} requires {what}")))
        } else {
            Ok(())
        }
    };
    let words = split_words(&args, escape);
    let command = match lower.as_str() {
        "from" => {
            let (image, name_, as_kw) = match words.as_slice() {
                [image] => (image.clone(), None, None),
                [image, kw, stage] if kw.eq_ignore_ascii_case("as") => {
                    (image.clone(), Some(stage.clone()), Some(kw.clone()))
                }
                _ => return Err(err("FROM requires either one or three arguments".into())),
            };
            if let Some(stage) = &name_ {
                if !valid_stage_name(stage) {
                    return Err(err(format!(
                        "invalid name for build stage: {stage:?}, name can't start with a number or contain symbols"
                    )));
                }
            }
            Command::From {
                image,
                name: name_,
                as_keyword: as_kw,
            }
        }
        "run" => {
            need(args.len(), "at least one argument")?;
            validate_run_flags(&flags).map_err(err)?;
            Command::Run(command_line(&args))
        }
        "cmd" => Command::Cmd(command_line(&args)),
        "entrypoint" => Command::Entrypoint(command_line(&args)),
        "label" => {
            need(words.len(), "at least one argument")?;
            Command::Label(key_values(&args, &words, "LABEL", escape).map_err(err)?)
        }
        "env" => {
            need(words.len(), "at least one argument")?;
            Command::Env(key_values(&args, &words, "ENV", escape).map_err(err)?)
        }
        "maintainer" => {
            need(words.len(), "exactly one argument")?;
            Command::Maintainer(args.clone())
        }
        "expose" => {
            need(words.len(), "at least one argument")?;
            Command::Expose(words)
        }
        "add" | "copy" => {
            let (list, json) = match json_array(&args) {
                Some(v) => (v, true),
                None => (words, false),
            };
            if list.len() < 2 {
                return Err(err(format!(
                    "{name} requires at least two arguments, but only one was provided. Destination could not be determined"
                )));
            }
            let mut sources = list;
            let dest = sources.pop().unwrap_or_default();
            let transfer = Transfer {
                sources,
                dest,
                json,
            };
            if lower == "add" {
                Command::Add(transfer)
            } else {
                Command::Copy(transfer)
            }
        }
        "volume" => {
            let list = json_array(&args).unwrap_or(words);
            need(list.len(), "at least one argument")?;
            if list.iter().any(|v| v.trim().is_empty()) {
                return Err(err("VOLUME specified can not be an empty string".into()));
            }
            Command::Volume(list)
        }
        "user" => {
            if words.len() != 1 {
                return Err(err("USER requires exactly one argument".into()));
            }
            Command::User(args.clone())
        }
        "workdir" => {
            if words.len() != 1 {
                return Err(err("WORKDIR requires exactly one argument".into()));
            }
            Command::Workdir(args.clone())
        }
        "stopsignal" => {
            if words.len() != 1 {
                return Err(err("STOPSIGNAL requires exactly one argument".into()));
            }
            Command::Stopsignal(words[0].clone())
        }
        "arg" => {
            need(words.len(), "at least one argument")?;
            let mut decls = Vec::new();
            for w in &words {
                let (n, d) = match w.split_once('=') {
                    Some((n, d)) => (n.to_string(), Some(d.to_string())),
                    None => (w.clone(), None),
                };
                if n.is_empty() {
                    return Err(err("ARG names can not be blank".into()));
                }
                decls.push(ArgDecl {
                    name: n,
                    default: d,
                });
            }
            Command::Arg(decls)
        }
        "onbuild" => {
            need(words.len(), "at least one argument")?;
            let sub_kw = words[0].to_ascii_lowercase();
            match sub_kw.as_str() {
                "onbuild" => {
                    return Err(err(
                        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into()
                    ))
                }
                "from" | "maintainer" => {
                    return Err(err(format!(
                        "{} isn't allowed as an ONBUILD trigger",
                        sub_kw.to_ascii_uppercase()
                    )))
                }
                _ => {}
            }
            let sub = parse_instruction(&args, escape, line_no, column)?;
            Command::Onbuild(Box::new(sub))
        }
        "healthcheck" => {
            need(words.len(), "at least one argument")?;
            let (kind, cmd) = match args.split_once(|c: char| c.is_ascii_whitespace()) {
                Some((k, c)) => (k, c.trim()),
                None => (args.as_str(), ""),
            };
            match kind.to_ascii_uppercase().as_str() {
                "NONE" => {
                    if !cmd.is_empty() {
                        return Err(err("HEALTHCHECK NONE takes no arguments".into()));
                    }
                    if !flags.is_empty() {
                        return Err(err("HEALTHCHECK NONE takes no flags".into()));
                    }
                    Command::Healthcheck(Health::None)
                }
                "CMD" => {
                    if cmd.is_empty() {
                        return Err(err("Missing command after HEALTHCHECK CMD".into()));
                    }
                    validate_health_flags(&flags).map_err(err)?;
                    Command::Healthcheck(Health::Cmd(command_line(cmd)))
                }
                other => {
                    return Err(err(format!(
                        "Unknown type \"{other}\" in HEALTHCHECK (try CMD)"
                    )))
                }
            }
        }
        "shell" => match json_array(&args) {
            Some(v) if !v.is_empty() => Command::Shell(v),
            _ => return Err(err("SHELL requires the arguments to be in JSON form".into())),
        },
        _ => return Err(err(format!("unknown instruction: {keyword}"))),
    };
    Ok(Instruction {
        keyword: keyword.to_string(),
        command,
        flags,
        heredocs: Vec::new(),
        line: line_no,
        end_line: line_no,
        column,
        original: line.to_string(),
    })
}

/// BuildKit's stage name rule: `^[a-z][a-z0-9-_.]*$`, case-insensitively.
pub fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn suggest(lower: &str) -> String {
    let best = INSTRUCTIONS
        .iter()
        .map(|i| (levenshtein(i, lower), *i))
        .min()
        .filter(|(d, _)| *d <= 2);
    match best {
        Some((_, i)) => format!(" (did you mean {}?)", i),
        None => String::new(),
    }
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

/// ENV / LABEL pairs: `k=v …` or the legacy `k v` (BuildKit's `parseNameVal`).
fn key_values(
    args: &str,
    words: &[String],
    name: &str,
    escape: char,
) -> Result<Vec<KeyValue>, String> {
    let Some(first) = words.first() else {
        return Err(format!("{name} requires at least one argument"));
    };
    if !first.contains('=') {
        // Legacy form: the key, then the rest of the line as the value.
        let rest = args.trim_start()[first.len()..].trim();
        if rest.is_empty() {
            return Err(format!("{name} must have two arguments"));
        }
        let _ = escape;
        return Ok(vec![KeyValue {
            key: first.clone(),
            value: rest.to_string(),
            legacy: true,
        }]);
    }
    let mut out = Vec::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!(
                "Syntax error - can't find = in {w:?}. Must be of the form: name=value"
            ));
        };
        if k.is_empty() {
            return Err(format!("{name} names can not be blank"));
        }
        out.push(KeyValue {
            key: k.to_string(),
            value: v.to_string(),
            legacy: false,
        });
    }
    Ok(out)
}

fn validate_run_flags(flags: &[Flag]) -> Result<(), String> {
    for f in flags {
        let value = f.value.as_deref().unwrap_or("");
        match f.name.as_str() {
            "network" if !matches!(value, "default" | "none" | "host") => {
                return Err(format!("unsupported network mode {value:?}"));
            }
            "security" if !matches!(value, "insecure" | "sandbox") => {
                return Err(format!("unsupported security mode {value:?}"));
            }
            "mount" => validate_mount(value)?,
            _ => {}
        }
    }
    Ok(())
}

/// Checks a `--mount=` value the way BuildKit's `instructions.parseMount` does.
fn validate_mount(value: &str) -> Result<(), String> {
    let mut kind = "bind";
    let mut has_target = false;
    for field in value.split(',') {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v)),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        match k.as_str() {
            "type" => {
                let v = v.unwrap_or("");
                if !matches!(v, "bind" | "cache" | "tmpfs" | "secret" | "ssh") {
                    return Err(format!("unsupported mount type {v:?}"));
                }
                kind = match v {
                    "cache" => "cache",
                    "tmpfs" => "tmpfs",
                    "secret" => "secret",
                    "ssh" => "ssh",
                    _ => "bind",
                };
            }
            "target" | "dst" | "destination" => has_target = true,
            "readonly" | "ro" | "readwrite" | "rw" | "required" => {}
            "source" | "src" | "from" | "id" | "sharing" | "mode" | "uid" | "gid" | "size"
            | "env" => {
                if v.is_none() {
                    return Err(format!("invalid field '{k}' must be a key=value pair"));
                }
                if k == "sharing" && !matches!(v, Some("shared" | "private" | "locked")) {
                    return Err(format!(
                        "unsupported sharing value {:?}",
                        v.unwrap_or_default()
                    ));
                }
            }
            "" => {}
            other => return Err(format!("unexpected key '{other}' in '{field}'")),
        }
    }
    if !has_target && !matches!(kind, "secret" | "ssh") {
        return Err("mount destination (target) is required".into());
    }
    Ok(())
}

/// Parses a Go duration (`30s`, `1m30s`, `500ms`, `1h`) into nanoseconds.
pub fn parse_duration(text: &str) -> Option<u128> {
    if text == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * mult;
        rest = &rest[unit_len..];
    }
    Some(total as u128)
}

fn validate_health_flags(flags: &[Flag]) -> Result<(), String> {
    for f in flags {
        let value = f.value.as_deref().unwrap_or("");
        if f.name == "retries" {
            match value.parse::<i64>() {
                Ok(n) if n < 0 => return Err("--retries cannot be negative".into()),
                Ok(_) => {}
                Err(_) => return Err(format!("invalid --retries value {value:?}")),
            }
            continue;
        }
        let Some(ns) = parse_duration(value) else {
            return Err(format!("time: invalid duration {value:?}"));
        };
        if ns != 0 && ns < 1_000_000 {
            return Err(format!("Interval \"{}\" cannot be less than 1ms", f.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

//! A small implementation of Go's text/template over `serde_json::Value`, with the functions Docker adds
//! (docker/cli's `templates` package), so that the `--format` strings Docker users already have work
//! unchanged.
//!
//! Supported: text and actions with `{{- `/` -}}` trimming and `{{/* comments */}}`; fields `.A.B`, `.`,
//! `$`, variables (`$x := p`, `$x = p`, `$k, $v := range p`); string (`"…"`, `` `…` ``), character, number,
//! boolean and `nil` constants; parenthesised pipelines with fields after them (`(index .M "k").F`);
//! pipelines (`a | b c`, the piped value being the last argument); `if`/`else if`/`else`, `with`/`else with`/
//! `else`, `range` (arrays, objects in sorted key order, integers) with `else`, `break` and `continue`;
//! Go's builtins (`and or not len index slice printf print println eq ne lt le gt ge`) and Docker's
//! (`json join lower upper title split truncate pad`). Not supported: `define`, `template`, `block`,
//! `call`, `html`, `js`, `urlquery`.
//!
//! The values are JSON rather than Go structs, so a few things are more forgiving than Go: numbers compare
//! and print as numbers whatever their Go type would have been (an integral float prints without an
//! exponent), and the string functions accept numbers and booleans.

use serde_json::{Number, Value};

/// What a missing field or map key evaluates to (Go's zero value of an interface, printed `<no value>`).
static NULL: Value = Value::Null;

/// The functions a template may call; any other identifier is a parse error, as in Go.
const FUNCTIONS: &[&str] = &[
    "and", "or", "not", "len", "index", "slice", "printf", "print", "println", "eq", "ne", "lt",
    "le", "gt", "ge", "json", "join", "lower", "upper", "title", "split", "truncate", "pad",
];

/// A parsed template, ready to execute against any number of values.
pub struct Program {
    nodes: Vec<Node>,
}

impl Program {
    /// Parses Go template text; syntax errors, unknown functions and undefined variables are errors here,
    /// before anything runs, so a bad `--format` fails before any output.
    pub fn parse(src: &str) -> anyhow::Result<Self> {
        let items = Lexer::new(src).run().map_err(anyhow::Error::msg)?;
        let mut parser = Parser {
            items: items.into_iter(),
            vars: vec!["$".to_string()],
            range_depth: 0,
        };
        let (nodes, stop) = parser.list().map_err(anyhow::Error::msg)?;
        match stop {
            Stop::Eof => Ok(Self { nodes }),
            Stop::End(line) => anyhow::bail!("template: :{line}: unexpected {{{{end}}}}"),
            Stop::Else(action) => {
                anyhow::bail!("template: :{}: unexpected {{{{else}}}}", action.line)
            }
        }
    }

    /// Executes the template with `data` as both `.` and `$`.
    pub fn execute(&self, data: &Value) -> anyhow::Result<String> {
        let mut exec = Exec {
            root: data,
            vars: Vec::new(),
            out: String::new(),
        };
        exec.walk(data, &self.nodes).map_err(anyhow::Error::msg)?;
        Ok(exec.out)
    }

    /// The header row of a `table` template: the text between actions as it is, and for each top-level
    /// action (or control structure) the column name `names` gives for the first field it references,
    /// or nothing when it references none.
    pub fn header(&self, names: &dyn Fn(&str) -> String) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let pipe = match node {
                Node::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                // A declaration prints nothing, so it is no column.
                Node::Action(p) if p.decl.is_empty() => p,
                Node::If(b) | Node::With(b) | Node::Range(b) => &b.pipe,
                _ => continue,
            };
            if let Some(field) = pipe.first_field() {
                out.push_str(&names(&field));
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------------------
// Lexing

/// One token inside an action.
#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// `.Name` (a chain `.A.B` is several of these with no space between).
    Field(String),
    /// `.` alone.
    Dot,
    /// `$` or `$name`, with the `$`.
    Var(String),
    /// A function name or keyword.
    Ident(String),
    /// A string, number or boolean constant.
    Const(Value),
    Nil,
    LParen,
    RParen,
    Pipe,
    Declare,
    Assign,
    Comma,
}

/// A token and whether whitespace preceded it: `(x).F` chains a field but `(x) .F` passes two arguments.
#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    spaced: bool,
}

/// One action as written: its first line (for messages), its text, and its tokens.
#[derive(Debug)]
struct ActionSrc {
    line: usize,
    src: String,
    toks: Vec<Token>,
}

/// The lexer's output: the text between actions (already trimmed by `{{-`/`-}}`) and the actions.
enum Item {
    Text(String),
    Action(ActionSrc),
}

/// Go's whitespace for trim markers and between tokens.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_word(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    line: usize,
    items: Vec<Item>,
    /// The previous action ended with ` -}}`, so the next text loses its leading whitespace.
    trim_next: bool,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        Self {
            src,
            pos: 0,
            line: 1,
            items: Vec::new(),
            trim_next: false,
        }
    }

    fn err(&self, msg: impl std::fmt::Display) -> String {
        format!("template: :{}: {msg}", self.line)
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn text(&mut self, text: &str, trim_end: bool) {
        self.line += text.matches('\n').count();
        let mut t = text;
        if std::mem::take(&mut self.trim_next) {
            t = t.trim_start_matches(is_space);
        }
        if trim_end {
            t = t.trim_end_matches(is_space);
        }
        if !t.is_empty() {
            self.items.push(Item::Text(t.to_string()));
        }
    }

    fn run(mut self) -> Result<Vec<Item>, String> {
        loop {
            let rest = self.rest();
            let Some(open) = rest.find("{{") else {
                self.text(rest, false);
                return Ok(self.items);
            };
            let after = &rest[open + 2..];
            // `{{-` trims only when a space follows; `{{-3}}` is the number -3.
            let trim_left = after.starts_with('-') && after[1..].starts_with(is_space);
            self.text(&rest[..open], trim_left);
            self.pos += open + 2 + usize::from(trim_left);
            self.action()?;
        }
    }

    /// Skips whitespace and says whether there was any.
    fn skip_space(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_space) {
            self.bump();
        }
        self.pos > start
    }

    /// Consumes a closing delimiter if one is next, noting a ` -}}` trim marker.
    fn close(&mut self, spaced: bool) -> bool {
        if spaced && self.rest().starts_with("-}}") {
            self.pos += 3;
            self.trim_next = true;
            true
        } else if self.rest().starts_with("}}") {
            self.pos += 2;
            true
        } else {
            false
        }
    }

    fn action(&mut self) -> Result<(), String> {
        let line = self.line;
        let start = self.pos;
        let spaced = self.skip_space();
        if self.rest().starts_with("/*") {
            let Some(end) = self.rest().find("*/") else {
                return Err(self.err("unclosed comment"));
            };
            let comment = &self.rest()[..end + 2];
            self.line += comment.matches('\n').count();
            self.pos += end + 2;
            let spaced = self.skip_space();
            if !self.close(spaced) {
                return Err(self.err("comment ends before closing delimiter"));
            }
            return Ok(());
        }
        let mut toks = Vec::new();
        let mut spaced = spaced;
        let mut depth = 0usize;
        loop {
            if self.close(spaced) {
                break;
            }
            let Some(c) = self.peek() else {
                return Err(format!("template: :{line}: unclosed action"));
            };
            let tok = match c {
                '|' => self.single(Tok::Pipe),
                '(' => {
                    depth += 1;
                    self.single(Tok::LParen)
                }
                ')' => {
                    if depth == 0 {
                        return Err(self.err("unexpected right paren"));
                    }
                    depth -= 1;
                    self.single(Tok::RParen)
                }
                ',' => self.single(Tok::Comma),
                '=' => self.single(Tok::Assign),
                ':' => {
                    self.bump();
                    if self.bump() != Some('=') {
                        return Err(self.err("expected :="));
                    }
                    Tok::Declare
                }
                '"' => Tok::Const(Value::String(self.quoted()?)),
                '`' => Tok::Const(Value::String(self.raw()?)),
                '\'' => self.char_const()?,
                '$' => {
                    self.bump();
                    Tok::Var(format!("${}", self.word()))
                }
                '.' => {
                    let next = self.rest()[1..].chars().next();
                    if next.is_some_and(|n| n.is_ascii_digit()) {
                        self.number()?
                    } else if next.is_some_and(is_word) {
                        self.bump();
                        Tok::Field(self.word())
                    } else {
                        self.single(Tok::Dot)
                    }
                }
                '0'..='9' | '+' | '-' => self.number()?,
                c if is_word(c) => match self.word().as_str() {
                    "true" => Tok::Const(Value::Bool(true)),
                    "false" => Tok::Const(Value::Bool(false)),
                    "nil" => Tok::Nil,
                    w => Tok::Ident(w.to_string()),
                },
                c => return Err(self.err(format!("unexpected {c:?} in command"))),
            };
            toks.push(Token { tok, spaced });
            spaced = self.skip_space();
        }
        if depth > 0 {
            return Err(format!("template: :{line}: unclosed left paren"));
        }
        let inner = &self.src[start..self.pos];
        let src = inner
            .trim_end_matches("}}")
            .trim_end_matches('-')
            .trim()
            .to_string();
        self.items.push(Item::Action(ActionSrc { line, src, toks }));
        Ok(())
    }

    fn single(&mut self, tok: Tok) -> Tok {
        self.bump();
        tok
    }

    fn word(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(is_word) {
            self.bump();
        }
        self.src[start..self.pos].to_string()
    }

    /// A number as Go's lexer reads one: sign, 0x/0o/0b prefixes, `_` separators, fraction, exponent.
    fn number(&mut self) -> Result<Tok, String> {
        let start = self.pos;
        if matches!(self.peek(), Some('+' | '-')) {
            self.bump();
        }
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            || (matches!(self.peek(), Some('+' | '-'))
                && matches!(
                    self.src[..self.pos].chars().last(),
                    Some('e' | 'E' | 'p' | 'P')
                ))
        {
            self.bump();
        }
        let text = &self.src[start..self.pos];
        parse_number(text).ok_or_else(|| self.err(format!("bad number syntax: {text:?}")))
    }

    /// A `"…"` string with Go's escapes.
    fn quoted(&mut self) -> Result<String, String> {
        self.bump();
        let mut out = String::new();
        loop {
            match self.bump() {
                None | Some('\n') => return Err(self.err("unterminated quoted string")),
                Some('"') => return Ok(out),
                Some('\\') => out.push(self.escape('"')?),
                Some(c) => out.push(c),
            }
        }
    }

    /// A `` `…` `` string: no escapes, may span lines.
    fn raw(&mut self) -> Result<String, String> {
        self.bump();
        let Some(end) = self.rest().find('`') else {
            return Err(self.err("unterminated raw quoted string"));
        };
        let s = self.rest()[..end].to_string();
        self.line += s.matches('\n').count();
        self.pos += end + 1;
        Ok(s)
    }

    /// A character constant such as `'a'` or `'\n'`, which Go treats as its code point.
    fn char_const(&mut self) -> Result<Tok, String> {
        self.bump();
        let c = match self.bump() {
            Some('\\') => self.escape('\'')?,
            Some(c) if c != '\'' && c != '\n' => c,
            _ => return Err(self.err("malformed character constant")),
        };
        if self.bump() != Some('\'') {
            return Err(self.err("malformed character constant"));
        }
        Ok(Tok::Const(Value::from(u32::from(c))))
    }

    /// The character a backslash escape stands for (the backslash already read).
    fn escape(&mut self, quote: char) -> Result<char, String> {
        let bad = |l: &Self| l.err("invalid escape in quoted string");
        let Some(c) = self.bump() else {
            return Err(bad(self));
        };
        let hex = |l: &mut Self, n: usize| -> Result<char, String> {
            let digits = l.rest().get(..n).unwrap_or("").to_string();
            let code = u32::from_str_radix(&digits, 16).map_err(|_| bad(l))?;
            l.pos += n;
            char::from_u32(code).ok_or_else(|| bad(l))
        };
        Ok(match c {
            'a' => '\x07',
            'b' => '\x08',
            'f' => '\x0c',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\x0b',
            '\\' => '\\',
            c if c == quote => c,
            'x' => hex(self, 2)?,
            'u' => hex(self, 4)?,
            'U' => hex(self, 8)?,
            '0'..='7' => {
                let digits = format!("{c}{}", self.rest().get(..2).unwrap_or(""));
                let code = u32::from_str_radix(&digits, 8).map_err(|_| bad(self))?;
                self.pos += 2;
                char::from_u32(code).ok_or_else(|| bad(self))?
            }
            _ => return Err(bad(self)),
        })
    }
}

/// Go's numeric constant syntax, to a JSON number (integral values stay integers).
fn parse_number(text: &str) -> Option<Tok> {
    let clean = text.replace('_', "");
    let (neg, digits) = match clean.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, clean.strip_prefix('+').unwrap_or(&clean)),
    };
    let radix = match digits.get(..2).map(str::to_ascii_lowercase).as_deref() {
        Some("0x") => 16,
        Some("0o") => 8,
        Some("0b") => 2,
        _ => 10,
    };
    let value = if radix != 10 {
        let n = i64::from_str_radix(&digits[2..], radix).ok()?;
        Value::from(if neg { -n } else { n })
    } else if let Ok(n) = digits.parse::<i64>() {
        Value::from(if neg { -n } else { n })
    } else {
        let f: f64 = digits.parse().ok()?;
        let f = if neg { -f } else { f };
        if f.fract() == 0.0 && f.abs() < 9.0e15 {
            Value::from(f as i64)
        } else {
            Value::Number(Number::from_f64(f)?)
        }
    };
    Some(Tok::Const(value))
}

// ---------------------------------------------------------------------------------------------------------
// Parsing

enum Node {
    Text(String),
    /// `{{pipeline}}`: prints the value unless the pipeline declares or assigns a variable.
    Action(Pipe),
    If(Branch),
    With(Branch),
    Range(Branch),
    Break,
    Continue,
}

/// The parts of `if`, `with` and `range`.
struct Branch {
    pipe: Pipe,
    list: Vec<Node>,
    else_list: Vec<Node>,
}

/// A pipeline with its declared variables, and where it was written (for runtime errors).
struct Pipe {
    line: usize,
    src: String,
    decl: Vec<String>,
    assign: bool,
    cmds: Vec<Cmd>,
}

impl Pipe {
    /// Wraps a runtime error with where it happened, as Go's "executing … at <…>".
    fn context(&self, msg: String) -> String {
        if msg.starts_with("template: ") {
            msg
        } else {
            format!(
                "template: :{}: executing at <{{{{{}}}}}>: {msg}",
                self.line, self.src
            )
        }
    }

    /// The first field the pipeline references (`A.B` for `.A.B`), for table headers.
    fn first_field(&self) -> Option<String> {
        self.cmds
            .iter()
            .flat_map(|c| &c.args)
            .find_map(|t| match t {
                Term::Field(path) => Some(path.join(".")),
                Term::Var(_, path) if !path.is_empty() => Some(path.join(".")),
                Term::Sub(p, path) => p
                    .first_field()
                    .or_else(|| (!path.is_empty()).then(|| path.join("."))),
                _ => None,
            })
    }
}

/// One stage of a pipeline: a function or value and its arguments.
struct Cmd {
    args: Vec<Term>,
}

enum Term {
    Dot,
    /// `.A.B`, relative to dot.
    Field(Vec<String>),
    /// `$x.A.B`.
    Var(String, Vec<String>),
    Func(String),
    Const(Value),
    Nil,
    /// `(pipeline).A.B`.
    Sub(Box<Pipe>, Vec<String>),
}

/// What ended a list of nodes.
enum Stop {
    Eof,
    End(usize),
    Else(ActionSrc),
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    If,
    With,
    Range,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::If => "if",
            Kind::With => "with",
            Kind::Range => "range",
        }
    }
}

struct Parser {
    items: std::vec::IntoIter<Item>,
    /// Variables in scope, to reject undefined ones at parse time as Go does.
    vars: Vec<String>,
    /// How many `range`s enclose the current list (`break`/`continue` need one).
    range_depth: usize,
}

/// The word a token is, for messages.
fn describe(t: &Tok) -> String {
    match t {
        Tok::Field(f) => format!(".{f}"),
        Tok::Dot => ".".into(),
        Tok::Var(v) | Tok::Ident(v) => v.clone(),
        Tok::Const(v) => v.to_string(),
        Tok::Nil => "nil".into(),
        Tok::LParen => "(".into(),
        Tok::RParen => ")".into(),
        Tok::Pipe => "|".into(),
        Tok::Declare => ":=".into(),
        Tok::Assign => "=".into(),
        Tok::Comma => ",".into(),
    }
}

impl Parser {
    fn list(&mut self) -> Result<(Vec<Node>, Stop), String> {
        let mut nodes = Vec::new();
        while let Some(item) = self.items.next() {
            let action = match item {
                Item::Text(t) => {
                    nodes.push(Node::Text(t));
                    continue;
                }
                Item::Action(a) => a,
            };
            let err = |msg: String| format!("template: :{}: {msg}", action.line);
            let keyword = match action.toks.first() {
                None => return Err(err("missing value for command".into())),
                Some(Token {
                    tok: Tok::Ident(w), ..
                }) => w.clone(),
                Some(_) => String::new(),
            };
            let bare = |what: &str| match action.toks.get(1) {
                Some(t) => Err(err(format!("unexpected {} in {what}", describe(&t.tok)))),
                None => Ok(()),
            };
            match keyword.as_str() {
                "end" => {
                    bare("end")?;
                    return Ok((nodes, Stop::End(action.line)));
                }
                "else" => return Ok((nodes, Stop::Else(action))),
                "if" => nodes.push(self.control(Kind::If, &action, 1)?),
                "with" => nodes.push(self.control(Kind::With, &action, 1)?),
                "range" => nodes.push(self.control(Kind::Range, &action, 1)?),
                "break" | "continue" => {
                    bare(&keyword)?;
                    if self.range_depth == 0 {
                        return Err(err(format!("{{{{{keyword}}}}} outside {{{{range}}}}")));
                    }
                    nodes.push(if keyword == "break" {
                        Node::Break
                    } else {
                        Node::Continue
                    });
                }
                "define" | "template" | "block" => {
                    return Err(err(format!("{{{{{keyword}}}}} is not supported")))
                }
                _ => {
                    let mut i = 0;
                    let pipe = self.pipe(&action, &mut i, "command", false)?;
                    nodes.push(Node::Action(pipe));
                }
            }
        }
        Ok((nodes, Stop::Eof))
    }

    /// `if`/`with`/`range` from its pipeline (tokens from `start`) to its `{{end}}`.
    fn control(&mut self, kind: Kind, action: &ActionSrc, start: usize) -> Result<Node, String> {
        // Variables declared in the pipeline or the lists go out of scope at `{{end}}`.
        let mark = self.vars.len();
        let mut i = start;
        let pipe = self.pipe(action, &mut i, kind.name(), false)?;
        if kind == Kind::Range {
            self.range_depth += 1;
        }
        let listed = self.list();
        if kind == Kind::Range {
            self.range_depth -= 1;
        }
        let (list, stop) = listed?;
        let eof = |line: usize| format!("template: :{line}: unexpected EOF");
        let else_list = match stop {
            Stop::Eof => return Err(eof(action.line)),
            Stop::End(_) => Vec::new(),
            Stop::Else(other) => match other.toks.get(1).map(|t| &t.tok) {
                None => match self.list()? {
                    (l, Stop::End(_)) => l,
                    (_, Stop::Eof) => return Err(eof(other.line)),
                    (_, Stop::Else(e)) => {
                        return Err(format!(
                            "template: :{}: expected end; found {{{{else}}}}",
                            e.line
                        ))
                    }
                },
                // `{{else if c}}` is `{{else}}{{if c}}…{{end}}` sharing the outer `{{end}}`.
                Some(Tok::Ident(w)) if w == "if" && kind != Kind::Range => {
                    vec![self.control(Kind::If, &other, 2)?]
                }
                Some(Tok::Ident(w)) if w == "with" && kind == Kind::With => {
                    vec![self.control(Kind::With, &other, 2)?]
                }
                Some(t) => {
                    return Err(format!(
                        "template: :{}: unexpected {} in else",
                        other.line,
                        describe(t)
                    ))
                }
            },
        };
        self.vars.truncate(mark);
        let branch = Branch {
            pipe,
            list,
            else_list,
        };
        Ok(match kind {
            Kind::If => Node::If(branch),
            Kind::With => Node::With(branch),
            Kind::Range => Node::Range(branch),
        })
    }

    /// A pipeline from token `i`: up to the end of the action, or to its `)` when `nested`.
    fn pipe(
        &mut self,
        action: &ActionSrc,
        i: &mut usize,
        context: &str,
        nested: bool,
    ) -> Result<Pipe, String> {
        let toks = &action.toks;
        let err = |msg: String| format!("template: :{}: {msg}", action.line);
        let tok = |j: usize| toks.get(j).map(|t| &t.tok);
        let mut decl = Vec::new();
        let mut assign = false;
        if let Some(Tok::Var(v)) = tok(*i) {
            match (tok(*i + 1), tok(*i + 2), tok(*i + 3)) {
                (Some(op @ (Tok::Declare | Tok::Assign)), _, _) => {
                    decl.push(v.clone());
                    assign = *op == Tok::Assign;
                    *i += 2;
                }
                (Some(Tok::Comma), Some(Tok::Var(v2)), Some(op @ (Tok::Declare | Tok::Assign)))
                    if context == "range" =>
                {
                    decl.push(v.clone());
                    decl.push(v2.clone());
                    assign = *op == Tok::Assign;
                    *i += 4;
                }
                (Some(Tok::Comma), _, _) => {
                    return Err(err(format!("too many declarations in {context}")))
                }
                _ => {}
            }
        }
        if assign {
            if let Some(v) = decl.iter().find(|v| !self.vars.contains(v)) {
                return Err(err(format!("undefined variable {v:?}")));
            }
        }
        let mut cmds = Vec::new();
        loop {
            let cmd = self.cmd(action, i)?;
            if !cmds.is_empty() {
                if let Some(Term::Dot | Term::Const(_) | Term::Nil) = cmd.args.first() {
                    return Err(err(format!(
                        "non executable command in pipeline stage {}",
                        cmds.len() + 1
                    )));
                }
            }
            cmds.push(cmd);
            match tok(*i) {
                Some(Tok::Pipe) => *i += 1,
                Some(Tok::RParen) if nested => {
                    *i += 1;
                    break;
                }
                None if !nested => break,
                None => return Err(err("unclosed left paren".into())),
                Some(t) => return Err(err(format!("unexpected {} in {context}", describe(t)))),
            }
        }
        if !assign {
            self.vars.extend(decl.iter().cloned());
        }
        Ok(Pipe {
            line: action.line,
            src: action.src.clone(),
            decl,
            assign,
            cmds,
        })
    }

    fn cmd(&mut self, action: &ActionSrc, i: &mut usize) -> Result<Cmd, String> {
        let mut args = Vec::new();
        while let Some(t) = action.toks.get(*i) {
            match t.tok {
                Tok::Pipe | Tok::RParen => break,
                Tok::Declare | Tok::Assign | Tok::Comma => {
                    return Err(format!(
                        "template: :{}: unexpected {} in operand",
                        action.line,
                        describe(&t.tok)
                    ))
                }
                _ => args.push(self.term(action, i)?),
            }
        }
        let err = |msg: &str| Err(format!("template: :{}: {msg}", action.line));
        match args.first() {
            None => err("missing value for command"),
            Some(Term::Nil) => err("nil is not a command"),
            Some(Term::Dot | Term::Const(_)) if args.len() > 1 => {
                err("can't give argument to non-function")
            }
            Some(Term::Var(_, path)) if path.is_empty() && args.len() > 1 => {
                err("can't give argument to non-function")
            }
            _ => Ok(Cmd { args }),
        }
    }

    fn term(&mut self, action: &ActionSrc, i: &mut usize) -> Result<Term, String> {
        let err = |msg: String| format!("template: :{}: {msg}", action.line);
        let Some(t) = action.toks.get(*i) else {
            return Err(err("missing value for command".into()));
        };
        *i += 1;
        let mut term = match &t.tok {
            Tok::Dot => Term::Dot,
            Tok::Nil => Term::Nil,
            Tok::Const(v) => Term::Const(v.clone()),
            Tok::Field(f) => Term::Field(vec![f.clone()]),
            Tok::Var(v) => {
                if !self.vars.contains(v) {
                    return Err(err(format!("undefined variable {v:?}")));
                }
                Term::Var(v.clone(), Vec::new())
            }
            Tok::Ident(name) if FUNCTIONS.contains(&name.as_str()) => Term::Func(name.clone()),
            Tok::Ident(name)
                if matches!(
                    name.as_str(),
                    "if" | "else" | "end" | "range" | "with" | "break" | "continue"
                ) =>
            {
                return Err(err(format!("unexpected {name} in command")))
            }
            Tok::Ident(name) => return Err(err(format!("function {name:?} not defined"))),
            Tok::LParen => {
                let p = self.pipe(action, i, "parenthesized pipeline", true)?;
                Term::Sub(Box::new(p), Vec::new())
            }
            other => return Err(err(format!("unexpected {} in operand", describe(other)))),
        };
        // Fields written right after a term (`$x.A`, `(…).A`, `.A.B`) chain onto it.
        while let Some(Token {
            tok: Tok::Field(f),
            spaced: false,
        }) = action.toks.get(*i)
        {
            match &mut term {
                Term::Field(path) | Term::Var(_, path) | Term::Sub(_, path) => path.push(f.clone()),
                _ => return Err(err(format!("unexpected .{f} after term"))),
            }
            *i += 1;
        }
        Ok(term)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Execution

/// How a list ended, for `break` and `continue`.
#[derive(PartialEq)]
enum Flow {
    Normal,
    Break,
    Continue,
}

struct Exec<'a> {
    root: &'a Value,
    vars: Vec<(String, Value)>,
    out: String,
}

/// Go's notion of truth: false, 0, null and empty strings, arrays and objects are false.
pub fn truth(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A value as an action prints it: Go's `<no value>` for a missing one, otherwise as `fmt.Print` would.
pub fn text_of(v: &Value) -> String {
    match v {
        Value::Null => "<no value>".into(),
        other => fmt_value(other),
    }
}

/// `fmt`'s `%v`: maps as `map[k:v]` in key order, arrays as `[a b]`, nil as `<nil>`.
fn fmt_value(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => fmt_number(n),
        Value::String(s) => s.clone(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(fmt_value).collect::<Vec<_>>().join(" ")
        ),
        Value::Object(map) => format!(
            "map[{}]",
            sorted(map)
                .map(|(k, v)| format!("{k}:{}", fmt_value(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

/// An object's entries in key order, as Go iterates and prints maps.
fn sorted(map: &serde_json::Map<String, Value>) -> impl Iterator<Item = (&String, &Value)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries.into_iter()
}

/// Integers as integers; other floats as Go's `%v` (shortest form, exponent below 1e-4 or from 1e21).
fn fmt_number(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    if f.fract() == 0.0 && f.abs() < 1e21 {
        return format!("{f:.0}");
    }
    let exp = f.abs().log10().floor();
    if !(-4.0..21.0).contains(&exp) {
        go_exponent(&format!("{f:e}"))
    } else {
        f.to_string()
    }
}

/// Rust's `1.5e-7` as Go writes it, `1.5e-07`.
fn go_exponent(s: &str) -> String {
    match s.split_once(['e', 'E']) {
        Some((mantissa, exp)) => {
            let upper = s.contains('E');
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!(
                "{mantissa}{}{sign}{digits:0>2}",
                if upper { 'E' } else { 'e' }
            )
        }
        None => s.to_string(),
    }
}

/// Go's type name for a value, for messages.
fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

/// A field of an object; a missing field, or any field of nil, is nil (Go's zero value for map entries).
fn field<'v>(v: &'v Value, name: &str) -> Result<&'v Value, String> {
    match v {
        Value::Object(m) => Ok(m.get(name).unwrap_or(&NULL)),
        Value::Null => Ok(&NULL),
        other => Err(format!(
            "can't evaluate field {name} in type {}",
            go_type(other)
        )),
    }
}

/// One label from `Labels`, an object or Docker's `k=v,k2=v2` string; missing is "" as in Docker.
fn label(labels: &Value, key: &str) -> String {
    match labels {
        Value::Object(m) => m.get(key).map(text_of).unwrap_or_default(),
        Value::String(s) => s
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

impl Exec<'_> {
    fn walk(&mut self, dot: &Value, nodes: &[Node]) -> Result<Flow, String> {
        for node in nodes {
            let flow = match node {
                Node::Text(t) => {
                    self.out.push_str(t);
                    Flow::Normal
                }
                Node::Action(p) => {
                    let v = self.pipe(dot, p).map_err(|e| p.context(e))?;
                    if p.decl.is_empty() {
                        self.out.push_str(&text_of(&v));
                    }
                    Flow::Normal
                }
                Node::If(b) | Node::With(b) => {
                    let mark = self.vars.len();
                    let v = self.pipe(dot, &b.pipe).map_err(|e| b.pipe.context(e))?;
                    let flow = if !truth(&v) {
                        self.walk(dot, &b.else_list)
                    } else if matches!(node, Node::With(_)) {
                        self.walk(&v, &b.list)
                    } else {
                        self.walk(dot, &b.list)
                    };
                    self.vars.truncate(mark);
                    flow?
                }
                Node::Range(b) => {
                    let mark = self.vars.len();
                    let flow = self.range(dot, b);
                    self.vars.truncate(mark);
                    flow?
                }
                Node::Break => Flow::Break,
                Node::Continue => Flow::Continue,
            };
            if flow != Flow::Normal {
                return Ok(flow);
            }
        }
        Ok(Flow::Normal)
    }

    fn range(&mut self, dot: &Value, b: &Branch) -> Result<Flow, String> {
        let v = self.pipe(dot, &b.pipe).map_err(|e| b.pipe.context(e))?;
        // The declared variables were pushed last; each iteration rebinds them.
        let base = self.vars.len().saturating_sub(b.pipe.decl.len());
        let items: Vec<(Value, Value)> = match v {
            Value::Array(a) => a
                .into_iter()
                .enumerate()
                .map(|(i, e)| (Value::from(i), e))
                .collect(),
            Value::Object(m) => {
                let mut entries: Vec<_> = m.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                entries
                    .into_iter()
                    .map(|(k, e)| (Value::String(k), e))
                    .collect()
            }
            // Go 1.22 ranges over an integer n as 0…n-1.
            Value::Number(n) if n.as_u64().is_some() => (0..n.as_u64().unwrap_or(0))
                .map(|i| (Value::from(i), Value::from(i)))
                .collect(),
            // A nil map or slice is empty, not an error.
            Value::Null => Vec::new(),
            other => {
                return Err(b
                    .pipe
                    .context(format!("range can't iterate over {}", fmt_value(&other))))
            }
        };
        if items.is_empty() {
            return self.walk(dot, &b.else_list);
        }
        for (key, elem) in items {
            let values = match b.pipe.decl.len() {
                1 => vec![elem.clone()],
                2 => vec![key, elem.clone()],
                _ => Vec::new(),
            };
            for (n, (name, value)) in b.pipe.decl.iter().zip(values).enumerate() {
                if b.pipe.assign {
                    self.set_var(name, value);
                } else if let Some(slot) = self.vars.get_mut(base + n) {
                    slot.1 = value;
                }
            }
            let mark = self.vars.len();
            let flow = self.walk(&elem, &b.list);
            self.vars.truncate(mark);
            if flow? == Flow::Break {
                break;
            }
        }
        Ok(Flow::Normal)
    }

    fn var(&self, name: &str) -> Result<Value, String> {
        if let Some((_, v)) = self.vars.iter().rev().find(|(n, _)| n == name) {
            return Ok(v.clone());
        }
        if name == "$" {
            return Ok(self.root.clone());
        }
        Err(format!("undefined variable: {name}"))
    }

    fn set_var(&mut self, name: &str, value: Value) {
        if let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| n == name) {
            slot.1 = value;
        }
    }

    fn pipe(&mut self, dot: &Value, pipe: &Pipe) -> Result<Value, String> {
        let mut value: Option<Value> = None;
        for cmd in &pipe.cmds {
            value = Some(self.cmd(dot, cmd, value)?);
        }
        let value = value.unwrap_or(Value::Null);
        for name in &pipe.decl {
            if pipe.assign {
                self.set_var(name, value.clone());
            } else {
                self.vars.push((name.clone(), value.clone()));
            }
        }
        Ok(value)
    }

    /// One pipeline stage; `last` is the previous stage's value, passed as the final argument.
    fn cmd(&mut self, dot: &Value, cmd: &Cmd, last: Option<Value>) -> Result<Value, String> {
        let Some((first, args)) = cmd.args.split_first() else {
            return Err("empty command".into());
        };
        match first {
            Term::Field(path) => self.chain(dot, dot, path, args, last),
            Term::Var(name, path) => {
                let v = self.var(name)?;
                self.chain(dot, &v, path, args, last)
            }
            Term::Sub(p, path) => {
                let v = self.pipe(dot, p)?;
                self.chain(dot, &v, path, args, last)
            }
            Term::Func(name) => self.call(dot, name, args, last),
            Term::Dot | Term::Const(_) | Term::Nil => {
                if !args.is_empty() || last.is_some() {
                    return Err("can't give argument to non-function".into());
                }
                self.arg(dot, first)
            }
        }
    }

    /// Fields `path` of `recv`; the last one gets any arguments, which only `.Label "k"` accepts.
    fn chain(
        &mut self,
        dot: &Value,
        recv: &Value,
        path: &[String],
        args: &[Term],
        last: Option<Value>,
    ) -> Result<Value, String> {
        let has_args = !args.is_empty() || last.is_some();
        let Some((name, init)) = path.split_last() else {
            if has_args {
                return Err("can't give argument to non-function".into());
            }
            return Ok(recv.clone());
        };
        let mut cur = recv;
        for f in init {
            cur = field(cur, f)?;
        }
        if !has_args {
            return field(cur, name).cloned();
        }
        match cur {
            // Docker's ps and images rows have a `Label` method; here it reads `Labels`.
            Value::Object(m) if name == "Label" && !m.contains_key("Label") => {
                let mut vals = self.args(dot, args)?;
                vals.extend(last);
                match vals.as_slice() {
                    [key] => Ok(Value::String(label(
                        m.get("Labels").unwrap_or(&NULL),
                        &string_arg(key)?,
                    ))),
                    _ => Err(format!(
                        "wrong number of args for Label: want 1 got {}",
                        vals.len()
                    )),
                }
            }
            Value::Object(_) | Value::Null => {
                Err(format!("{name} is not a method but has arguments"))
            }
            other => Err(format!(
                "can't evaluate field {name} in type {}",
                go_type(other)
            )),
        }
    }

    fn arg(&mut self, dot: &Value, term: &Term) -> Result<Value, String> {
        match term {
            Term::Dot => Ok(dot.clone()),
            Term::Const(v) => Ok(v.clone()),
            Term::Nil => Ok(Value::Null),
            Term::Field(path) => self.chain(dot, dot, path, &[], None),
            Term::Var(name, path) => {
                let v = self.var(name)?;
                self.chain(dot, &v, path, &[], None)
            }
            Term::Sub(p, path) => {
                let v = self.pipe(dot, p)?;
                self.chain(dot, &v, path, &[], None)
            }
            Term::Func(name) => self.call(dot, name, &[], None),
        }
    }

    fn args(&mut self, dot: &Value, terms: &[Term]) -> Result<Vec<Value>, String> {
        terms.iter().map(|t| self.arg(dot, t)).collect()
    }

    fn call(
        &mut self,
        dot: &Value,
        name: &str,
        terms: &[Term],
        last: Option<Value>,
    ) -> Result<Value, String> {
        // `and` and `or` stop at the first argument that decides them, as Go's do.
        if name == "and" || name == "or" {
            if terms.is_empty() && last.is_none() {
                return Err(format!(
                    "wrong number of args for {name}: want at least 1 got 0"
                ));
            }
            let mut v = Value::Null;
            for t in terms {
                v = self.arg(dot, t)?;
                if truth(&v) == (name == "or") {
                    return Ok(v);
                }
            }
            return Ok(last.unwrap_or(v));
        }
        let mut args = self.args(dot, terms)?;
        args.extend(last);
        call_function(name, &args)
    }
}

/// Checks a function's argument count.
fn want(name: &str, args: &[Value], n: usize) -> Result<(), String> {
    if args.len() == n {
        Ok(())
    } else {
        Err(format!(
            "wrong number of args for {name}: want {n} got {}",
            args.len()
        ))
    }
}

/// A string argument; numbers and booleans are taken as their text, being strings in Docker's structs.
fn string_arg(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(_) | Value::Bool(_) => Ok(fmt_value(v)),
        other => Err(format!(
            "wrong type for value; expected string; got {}",
            go_type(other)
        )),
    }
}

fn int_arg(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .ok_or_else(|| format!("expected integer; found {}", fmt_number(n))),
        other => Err(format!("expected integer; found {}", go_type(other))),
    }
}

/// A non-negative integer argument, for lengths and positions.
fn size_arg(v: &Value) -> Result<usize, String> {
    let i = int_arg(v)?;
    usize::try_from(i).map_err(|_| format!("negative value {i}"))
}

fn call_function(name: &str, args: &[Value]) -> Result<Value, String> {
    let s = Value::String;
    match name {
        "not" => {
            want(name, args, 1)?;
            Ok(Value::Bool(!truth(&args[0])))
        }
        "len" => {
            want(name, args, 1)?;
            let n = match &args[0] {
                Value::String(s) => s.len(),
                Value::Array(a) => a.len(),
                Value::Object(o) => o.len(),
                other => return Err(format!("len of type {}", go_type(other))),
            };
            Ok(Value::from(n))
        }
        "index" => {
            let Some((item, keys)) = args.split_first() else {
                return Err("wrong number of args for index: want at least 1 got 0".into());
            };
            let mut cur = item.clone();
            for key in keys {
                cur = index(&cur, key)?;
            }
            Ok(cur)
        }
        "slice" => slice(args),
        "printf" => match args.split_first() {
            Some((Value::String(f), rest)) => Ok(s(sprintf(f, rest))),
            _ => Err("printf needs a format string".into()),
        },
        "print" => Ok(s(sprint(args))),
        "println" => Ok(s(format!(
            "{}\n",
            args.iter().map(fmt_value).collect::<Vec<_>>().join(" ")
        ))),
        "eq" => {
            if args.len() < 2 {
                return Err("missing argument for comparison".into());
            }
            for other in &args[1..] {
                if equal(&args[0], other)? {
                    return Ok(Value::Bool(true));
                }
            }
            Ok(Value::Bool(false))
        }
        "ne" => {
            want(name, args, 2)?;
            Ok(Value::Bool(!equal(&args[0], &args[1])?))
        }
        "lt" | "le" | "gt" | "ge" => {
            want(name, args, 2)?;
            let ord = compare(&args[0], &args[1])?;
            Ok(Value::Bool(match name {
                "lt" => ord.is_lt(),
                "le" => ord.is_le(),
                "gt" => ord.is_gt(),
                _ => ord.is_ge(),
            }))
        }
        // Docker's json: compact, HTML left alone, no trailing newline.
        "json" => {
            want(name, args, 1)?;
            serde_json::to_string(&args[0])
                .map(s)
                .map_err(|e| e.to_string())
        }
        "join" => {
            want(name, args, 2)?;
            let sep = string_arg(&args[1])?;
            match &args[0] {
                Value::Array(items) => Ok(s(items
                    .iter()
                    .map(fmt_value)
                    .collect::<Vec<_>>()
                    .join(&sep))),
                Value::Null => Ok(s(String::new())),
                other => Err(format!(
                    "wrong type for value; expected []string; got {}",
                    go_type(other)
                )),
            }
        }
        "split" => {
            want(name, args, 2)?;
            let (text, sep) = (string_arg(&args[0])?, string_arg(&args[1])?);
            // Go's strings.Split: "" splits into characters.
            let parts: Vec<Value> = if sep.is_empty() {
                text.chars().map(|c| s(c.to_string())).collect()
            } else {
                text.split(sep.as_str()).map(|p| s(p.to_string())).collect()
            };
            Ok(Value::Array(parts))
        }
        "lower" => {
            want(name, args, 1)?;
            Ok(s(string_arg(&args[0])?.to_lowercase()))
        }
        "upper" => {
            want(name, args, 1)?;
            Ok(s(string_arg(&args[0])?.to_uppercase()))
        }
        "title" => {
            want(name, args, 1)?;
            Ok(s(title(&string_arg(&args[0])?)))
        }
        // Docker's truncate: the first n bytes (here never splitting a character).
        "truncate" => {
            want(name, args, 2)?;
            let text = string_arg(&args[0])?;
            let mut n = size_arg(&args[1])?.min(text.len());
            while !text.is_char_boundary(n) {
                n -= 1;
            }
            Ok(s(text[..n].to_string()))
        }
        // Docker's pad: spaces before and after, but an empty string stays empty.
        "pad" => {
            want(name, args, 3)?;
            let text = string_arg(&args[0])?;
            let (before, after) = (size_arg(&args[1])?, size_arg(&args[2])?);
            if text.is_empty() {
                return Ok(s(text));
            }
            Ok(s(format!(
                "{}{text}{}",
                " ".repeat(before),
                " ".repeat(after)
            )))
        }
        other => Err(format!("function {other:?} not defined")),
    }
}

fn index(item: &Value, key: &Value) -> Result<Value, String> {
    match item {
        Value::Object(m) => match key {
            Value::String(k) => Ok(m.get(k).cloned().unwrap_or(Value::Null)),
            other => Err(format!(
                "value has type {}; should be string",
                go_type(other)
            )),
        },
        Value::Array(a) => {
            let i = int_arg(key)?;
            usize::try_from(i)
                .ok()
                .and_then(|i| a.get(i))
                .cloned()
                .ok_or_else(|| format!("error calling index: index out of range: {i}"))
        }
        Value::String(s) => {
            let i = int_arg(key)?;
            usize::try_from(i)
                .ok()
                .and_then(|i| s.as_bytes().get(i))
                .map(|b| Value::from(*b))
                .ok_or_else(|| format!("error calling index: index out of range: {i}"))
        }
        Value::Null => Err("error calling index: index of untyped nil".into()),
        other => Err(format!(
            "error calling index: can't index item of type {}",
            go_type(other)
        )),
    }
}

fn slice(args: &[Value]) -> Result<Value, String> {
    let Some((item, idx)) = args.split_first() else {
        return Err("wrong number of args for slice: want at least 1 got 0".into());
    };
    let len = match item {
        Value::String(s) => s.len(),
        Value::Array(a) => a.len(),
        other => {
            return Err(format!(
                "error calling slice: can't slice item of type {}",
                go_type(other)
            ))
        }
    };
    if idx.len() > 3 || (idx.len() == 3 && item.is_string()) {
        return Err("error calling slice: too many slice indexes".into());
    }
    let idx = idx.iter().map(size_arg).collect::<Result<Vec<_>, _>>()?;
    let from = idx.first().copied().unwrap_or(0);
    let to = idx.get(1).copied().unwrap_or(len);
    if from > to || to > len {
        return Err(format!(
            "error calling slice: index out of range: {from}:{to}"
        ));
    }
    Ok(match item {
        Value::String(s) => Value::String(
            s.get(from..to)
                .ok_or("error calling slice: not at a character boundary")?
                .to_string(),
        ),
        Value::Array(a) => Value::Array(a[from..to].to_vec()),
        _ => Value::Null,
    })
}

/// `eq`'s comparison: numbers by value, strings and booleans as themselves, nil only equal to nil.
fn equal(a: &Value, b: &Value) -> Result<bool, String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => Ok(x.as_f64() == y.as_f64()),
        (Value::String(x), Value::String(y)) => Ok(x == y),
        (Value::Bool(x), Value::Bool(y)) => Ok(x == y),
        (Value::Null, _) | (_, Value::Null) => Ok(a.is_null() && b.is_null()),
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => {
            Err("error calling eq: non-comparable types".into())
        }
        _ => Err("error calling eq: incompatible types for comparison".into()),
    }
}

fn compare(a: &Value, b: &Value) -> Result<std::cmp::Ordering, String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .ok_or_else(|| "invalid type for comparison".into()),
        (Value::String(x), Value::String(y)) => Ok(x.cmp(y)),
        (Value::Number(_), Value::String(_)) | (Value::String(_), Value::Number(_)) => {
            Err("incompatible types for comparison".into())
        }
        _ => Err("invalid type for comparison".into()),
    }
}

/// Go's strings.Title: the first letter of each word upper-cased.
fn title(s: &str) -> String {
    let separator = |c: char| {
        if c.is_ascii() {
            !(c.is_ascii_alphanumeric() || c == '_')
        } else {
            !c.is_alphanumeric() && c.is_whitespace()
        }
    };
    let mut prev = ' ';
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if separator(prev) {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        prev = c;
    }
    out
}

/// `fmt.Sprint`: spaces between operands when neither is a string.
fn sprint(args: &[Value]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 && !a.is_string() && !args[i - 1].is_string() {
            out.push(' ');
        }
        out.push_str(&fmt_value(a));
    }
    out
}

/// `strconv.Quote`: a double-quoted Go string literal.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The flags, width and precision of one `printf` verb.
#[derive(Default)]
struct Spec {
    minus: bool,
    plus: bool,
    zero: bool,
    space: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

/// `fmt.Sprintf` for the verbs templates use: `%v %s %d %q %t %f %e %g %x %X %o %b %c %%`, with flags,
/// width and precision. Mismatches print as Go's `%!d(string=x)`, missing arguments as `%!d(MISSING)`.
fn sprintf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    let mut next = 0;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = Spec::default();
        while let Some(&f) = chars.peek() {
            match f {
                '-' => spec.minus = true,
                '+' => spec.plus = true,
                '0' => spec.zero = true,
                ' ' => spec.space = true,
                '#' => {}
                _ => break,
            }
            chars.next();
        }
        let digits = |chars: &mut std::iter::Peekable<std::str::Chars>| {
            let mut n: Option<usize> = None;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = Some(n.unwrap_or(0).saturating_mul(10).saturating_add(d as usize));
                chars.next();
            }
            n
        };
        spec.width = digits(&mut chars);
        if chars.peek() == Some(&'.') {
            chars.next();
            spec.prec = Some(digits(&mut chars).unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        next += 1;
        let body = format_verb(verb, arg, &spec);
        out.push_str(&pad(body, &spec, arg.is_number()));
    }
    if next < args.len() {
        let extra: Vec<String> = args[next..]
            .iter()
            .map(|a| format!("{}={}", go_type(a), fmt_value(a)))
            .collect();
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    out
}

/// Pads to the width: spaces on the left (right with `-`), or zeros after any sign with `0`.
fn pad(body: String, spec: &Spec, numeric: bool) -> String {
    let len = body.chars().count();
    let Some(width) = spec.width.filter(|w| *w > len) else {
        return body;
    };
    let fill = width - len;
    if spec.minus {
        format!("{body}{}", " ".repeat(fill))
    } else if spec.zero {
        let (sign, rest) = match body.chars().next() {
            Some(c @ ('+' | '-')) if numeric => (c.to_string(), &body[1..]),
            _ => (String::new(), body.as_str()),
        };
        format!("{sign}{}{rest}", "0".repeat(fill))
    } else {
        format!("{}{body}", " ".repeat(fill))
    }
}

fn format_verb(verb: char, arg: &Value, spec: &Spec) -> String {
    let bad = || match arg {
        Value::Null => format!("%!{verb}(<nil>)"),
        _ => format!("%!{verb}({}={})", go_type(arg), fmt_value(arg)),
    };
    let sign = |n: f64, text: String| {
        if n >= 0.0 && spec.plus {
            format!("+{text}")
        } else if n >= 0.0 && spec.space {
            format!(" {text}")
        } else {
            text
        }
    };
    // Go applies a verb to each element of a slice.
    if let (Value::Array(items), 's' | 'd' | 'q' | 'x' | 'X') = (arg, verb) {
        let parts: Vec<String> = items.iter().map(|i| format_verb(verb, i, spec)).collect();
        return format!("[{}]", parts.join(" "));
    }
    let int = match arg {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        _ => None,
    };
    let float = arg.as_f64();
    match verb {
        'v' => match (arg, float) {
            (Value::Number(_), Some(f)) => sign(f, fmt_value(arg)),
            _ => fmt_value(arg),
        },
        's' => match arg {
            Value::String(s) => match spec.prec {
                Some(p) => s.chars().take(p).collect(),
                None => s.clone(),
            },
            Value::Null => bad(),
            other => fmt_value(other),
        },
        'q' => match (arg, int.and_then(|i| u32::try_from(i).ok())) {
            (Value::String(s), _) => go_quote(s),
            (_, Some(code)) => match char::from_u32(code) {
                Some(c) => format!("'{}'", go_quote(&c.to_string()).trim_matches('"')),
                None => bad(),
            },
            _ => bad(),
        },
        't' => match arg {
            Value::Bool(b) => b.to_string(),
            _ => bad(),
        },
        'd' => match int {
            Some(i) => sign(i as f64, i.to_string()),
            None => bad(),
        },
        'x' | 'X' | 'o' | 'b' => match (arg, int) {
            (_, Some(i)) => {
                let digits = match verb {
                    'x' => format!("{:x}", i.unsigned_abs()),
                    'X' => format!("{:X}", i.unsigned_abs()),
                    'o' => format!("{:o}", i.unsigned_abs()),
                    _ => format!("{:b}", i.unsigned_abs()),
                };
                sign(i as f64, if i < 0 { format!("-{digits}") } else { digits })
            }
            (Value::String(s), None) if verb == 'x' => {
                s.bytes().map(|b| format!("{b:02x}")).collect()
            }
            (Value::String(s), None) if verb == 'X' => {
                s.bytes().map(|b| format!("{b:02X}")).collect()
            }
            _ => bad(),
        },
        'c' => match int
            .and_then(|i| u32::try_from(i).ok())
            .and_then(char::from_u32)
        {
            Some(c) => c.to_string(),
            None => bad(),
        },
        'f' | 'F' => match float {
            Some(f) => sign(f, format!("{:.*}", spec.prec.unwrap_or(6), f)),
            None => bad(),
        },
        'e' | 'E' => match float {
            Some(f) => {
                let text = go_exponent(&format!("{:.*e}", spec.prec.unwrap_or(6), f));
                sign(
                    f,
                    if verb == 'E' {
                        text.to_uppercase()
                    } else {
                        text
                    },
                )
            }
            None => bad(),
        },
        'g' | 'G' => match (arg, float) {
            (Value::Number(n), Some(f)) => {
                let text = match spec.prec {
                    None => fmt_number(n),
                    Some(p) => format_g(f, p.max(1)),
                };
                sign(
                    f,
                    if verb == 'G' {
                        text.to_uppercase()
                    } else {
                        text
                    },
                )
            }
            _ => bad(),
        },
        _ => bad(),
    }
}

/// `%.Ng`: N significant digits, exponent form for exponents below -4 or from N, trailing zeros dropped.
fn format_g(f: f64, prec: usize) -> String {
    let sci = format!("{:.*e}", prec - 1, f);
    let exp: i64 = sci
        .split_once('e')
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if exp < -4 || exp >= prec as i64 {
        let (mantissa, _) = sci.split_once('e').unwrap_or((&sci, ""));
        go_exponent(&format!("{}e{exp}", trim(mantissa.to_string())))
    } else {
        let decimals = (prec as i64 - 1 - exp).max(0) as usize;
        trim(format!("{f:.decimals$}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(src: &str, data: &Value) -> String {
        match Program::parse(src) {
            Ok(p) => p
                .execute(data)
                .unwrap_or_else(|e| panic!("{src}: execute: {e}")),
            Err(e) => panic!("{src}: parse: {e}"),
        }
    }

    fn container() -> Value {
        json!({
            "Id": "abc123",
            "Name": "/web",
            "State": {"Status": "running", "Running": true, "ExitCode": 0, "Pid": 42},
            "Config": {
                "Cmd": ["httpd", "-f"],
                "Labels": {"b": "2", "a": "1"},
                "Env": ["A=1", "B=2"],
            },
            "Mounts": [
                {"Source": "/src", "Destination": "/dst"},
                {"Source": "/v", "Destination": "/data"},
            ],
            "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "10.88.0.2"}}},
            "Labels": {"k": "v"},
            "Empty": [],
            "Zero": 0,
            "X": "hello world,foo",
            "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]},
        })
    }

    #[test]
    fn template_fields_and_text() {
        let v = container();
        assert_eq!(run("id={{.Id}} {{.State.Status}}", &v), "id=abc123 running");
        assert_eq!(run("{{.Missing}}", &v), "<no value>");
        assert_eq!(run("{{.Missing.Deeper}}", &v), "<no value>");
        assert_eq!(run("{{.State.Pid}}", &v), "42");
        assert_eq!(run("{{.Config.Cmd}}", &v), "[httpd -f]");
        assert_eq!(run("{{.Config.Labels}}", &v), "map[a:1 b:2]");
        assert_eq!(
            run("{{$.Name}} {{$}}", &json!({"Name": "n"})),
            "n map[Name:n]"
        );
        assert_eq!(run("{{.}}", &json!([1, null, "a"])), "[1 <nil> a]");
        assert_eq!(run("{{.}}", &json!(1.5)), "1.5");
        assert_eq!(run("{{.}}", &json!(3.0)), "3");
    }

    #[test]
    fn template_trim_markers_and_comments() {
        let v = json!({"A": "a"});
        assert_eq!(run("x  {{- .A -}}  \n y", &v), "xay");
        assert_eq!(run("x {{.A -}} y", &v), "x ay");
        assert_eq!(run("x {{- .A}} y", &v), "xa y");
        assert_eq!(run("a {{/* note */}} b", &v), "a  b");
        assert_eq!(run("a {{- /* note */ -}} b", &v), "ab");
        assert_eq!(run("{{-3}}", &v), "-3");
    }

    #[test]
    fn template_literals() {
        let v = json!({});
        assert_eq!(run(r#"{{"a\tb\"c\u00e9"}}"#, &v), "a\tb\"cé");
        assert_eq!(run("{{`raw\\n`}}", &v), "raw\\n");
        assert_eq!(
            run("{{1}} {{-2}} {{1.5}} {{0x1F}} {{1e3}} {{'a'}}", &v),
            "1 -2 1.5 31 1000 97"
        );
        assert_eq!(run("{{true}} {{false}}", &v), "true false");
        assert_eq!(run(r#"{{"}}"}}"#, &v), "}}");
    }

    #[test]
    fn template_variables() {
        let v = container();
        assert_eq!(run("{{$x := .State.Status}}{{$x}}", &v), "running");
        assert_eq!(run("{{$x := 1}}{{$x = 2}}{{$x}}", &v), "2");
        assert_eq!(
            run(
                "{{range $i, $m := .Mounts}}{{$i}}:{{$m.Source}} {{end}}",
                &v
            ),
            "0:/src 1:/v "
        );
        assert_eq!(
            run("{{range $m := .Mounts}}{{$m.Destination}},{{end}}", &v),
            "/dst,/data,"
        );
        assert_eq!(run("{{with .State}}{{$.Name}}{{end}}", &v), "/web");
    }

    #[test]
    fn template_range() {
        let v = container();
        assert_eq!(
            run("{{range .Mounts}}{{.Source}}:{{.Destination}} {{end}}", &v),
            "/src:/dst /v:/data "
        );
        assert_eq!(
            run("{{range $k,$v := .Config.Labels}}{{$k}}={{$v}};{{end}}", &v),
            "a=1;b=2;"
        );
        assert_eq!(run("{{range .Empty}}x{{else}}none{{end}}", &v), "none");
        assert_eq!(run("{{range .Missing}}x{{else}}none{{end}}", &v), "none");
        assert_eq!(run("{{range 3}}{{.}}{{end}}", &v), "012");
        assert_eq!(
            run(
                "{{range .Config.Cmd}}{{if eq . \"-f\"}}{{break}}{{end}}{{.}}{{end}}",
                &v
            ),
            "httpd"
        );
        assert_eq!(
            run(
                "{{range .Config.Cmd}}{{if eq . \"httpd\"}}{{continue}}{{end}}{{.}}{{end}}",
                &v
            ),
            "-f"
        );
        assert_eq!(
            run(
                "{{range $p, $conf := .Ports}}{{$p}} -> {{(index $conf 0).HostPort}}{{end}}",
                &v
            ),
            "80/tcp -> 8080"
        );
    }

    #[test]
    fn template_if_with() {
        let v = container();
        assert_eq!(run("{{if .State.Running}}up{{else}}down{{end}}", &v), "up");
        assert_eq!(run("{{if .Zero}}up{{else}}down{{end}}", &v), "down");
        assert_eq!(run("{{if eq .State.Status \"running\"}}y{{end}}", &v), "y");
        assert_eq!(
            run(
                "{{if .Empty}}a{{else if .Zero}}b{{else if .Name}}c{{else}}d{{end}}",
                &v
            ),
            "c"
        );
        assert_eq!(run("{{with .State}}{{.Status}}{{end}}", &v), "running");
        assert_eq!(run("{{with .Missing}}x{{else}}none{{end}}", &v), "none");
        assert_eq!(
            run("{{with .Missing}}x{{else with .Name}}{{.}}{{end}}", &v),
            "/web"
        );
        assert_eq!(
            run("{{if $s := .State.Status}}{{$s}}{{end}}", &v),
            "running"
        );
        for (data, want) in [
            (json!(""), "f"),
            (json!("x"), "t"),
            (json!(0), "f"),
            (json!(0.5), "t"),
            (json!(false), "f"),
            (json!(null), "f"),
            (json!([]), "f"),
            (json!([0]), "t"),
            (json!({}), "f"),
            (json!({"a": 1}), "t"),
        ] {
            assert_eq!(run("{{if .}}t{{else}}f{{end}}", &data), want, "{data}");
        }
    }

    #[test]
    fn template_pipelines_and_parens() {
        let v = container();
        assert_eq!(run("{{.State.Status | printf \"%q\"}}", &v), "\"running\"");
        assert_eq!(run("{{.Name | upper | printf \"<%s>\"}}", &v), "</WEB>");
        assert_eq!(
            run(
                "{{(index .NetworkSettings.Networks \"bridge\").IPAddress}}",
                &v
            ),
            "10.88.0.2"
        );
        assert_eq!(run("{{len (index .Config \"Cmd\")}}", &v), "2");
        assert_eq!(run("{{(.State).Status}}", &v), "running");
    }

    #[test]
    fn template_builtins() {
        let v = container();
        assert_eq!(run("{{index .Labels \"k\"}}", &v), "v");
        assert_eq!(run("{{index .Config.Cmd 1}}", &v), "-f");
        assert_eq!(run("{{index .Labels \"nope\"}}", &v), "<no value>");
        assert_eq!(
            run("{{len .Config.Cmd}} {{len .Name}} {{len .Labels}}", &v),
            "2 4 1"
        );
        assert_eq!(
            run("{{slice .Name 1}} {{slice .Config.Cmd 0 1}}", &v),
            "web [httpd]"
        );
        assert_eq!(run("{{not .Zero}} {{not .Name}}", &v), "true false");
        assert_eq!(run("{{and .Name .Zero}} {{and .Name 1}}", &v), "0 1");
        assert_eq!(run("{{or .Zero .Name}} {{or .Zero \"\"}}", &v), "/web ");
        // `and` stops before evaluating an argument that would fail.
        assert_eq!(run("{{and .Zero (index .Name 99)}}", &v), "0");
        assert_eq!(
            run("{{eq .State.ExitCode 0}} {{eq 0.0 .State.ExitCode}}", &v),
            "true true"
        );
        assert_eq!(
            run("{{eq .Name \"a\" \"/web\"}} {{ne .Name \"/web\"}}", &v),
            "true false"
        );
        assert_eq!(
            run("{{lt 1 2}} {{le 2 2}} {{gt \"b\" \"a\"}} {{ge 1 2}}", &v),
            "true true true false"
        );
        assert_eq!(run("{{print \"a\" 1 2 \"b\"}}", &v), "a1 2b");
        assert_eq!(run("{{println \"a\" 1}}", &v), "a 1\n");
    }

    #[test]
    fn template_printf() {
        let v = json!({"S": "ab", "N": 42, "F": 1.23456, "B": true, "L": ["x", "y"]});
        assert_eq!(
            run("{{printf \"%s|%d|%v|%t\" .S .N .F .B}}", &v),
            "ab|42|1.23456|true"
        );
        assert_eq!(
            run("{{printf \"%5s|%-5s|%05d|%+d\" .S .S .N .N}}", &v),
            "   ab|ab   |00042|+42"
        );
        assert_eq!(
            run("{{printf \"%.2f|%8.3f|%f\" .F .F .N}}", &v),
            "1.23|   1.235|42.000000"
        );
        assert_eq!(
            run("{{printf \"%q %q\" .S .L}}", &v),
            "\"ab\" [\"x\" \"y\"]"
        );
        assert_eq!(
            run("{{printf \"%x %X %o %b %c\" 255 255 8 5 65}}", &v),
            "ff FF 10 101 A"
        );
        assert_eq!(
            run("{{printf \"%e %g %.3g\" 1234.5 0.00001 3.14159}}", &v),
            "1.234500e+03 1e-05 3.14"
        );
        assert_eq!(run("{{printf \"100%% %d\"}}", &v), "100% %!d(MISSING)");
        assert_eq!(run("{{printf \"%d\" .S}}", &v), "%!d(string=ab)");
        assert_eq!(run("{{printf \"%s\" .S .N}}", &v), "ab%!(EXTRA int=42)");
        assert_eq!(run("{{printf \"%v\" .L}}", &v), "[x y]");
    }

    #[test]
    fn template_docker_functions() {
        let v = container();
        assert_eq!(run("{{join .Config.Cmd \",\"}}", &v), "httpd,-f");
        assert_eq!(
            run("{{json .}}", &json!({"b": [1, "<x>"], "a": null})),
            r#"{"a":null,"b":[1,"<x>"]}"#
        );
        assert_eq!(run("{{json .Name}}", &v), "\"/web\"");
        assert_eq!(
            run("{{.State | json}}", &v),
            r#"{"ExitCode":0,"Pid":42,"Running":true,"Status":"running"}"#
        );
        assert_eq!(run("{{title .X}}", &v), "Hello World,Foo");
        assert_eq!(
            run("{{title \"hello_there wide-world\"}}", &v),
            "Hello_there Wide-World"
        );
        assert_eq!(run("{{split .X \",\"}}", &v), "[hello world foo]");
        assert_eq!(run("{{index (split .X \",\") 1}}", &v), "foo");
        assert_eq!(run("{{split \"ab\" \"\"}}", &v), "[a b]");
        assert_eq!(run("{{lower \"AbC\"}} {{upper .Name}}", &v), "abc /WEB");
        assert_eq!(
            run("{{truncate .Id 3}}|{{truncate .Id 99}}", &v),
            "abc|abc123"
        );
        assert_eq!(run("{{pad .Name 1 2}}|{{pad \"\" 1 2}}|", &v), " /web  ||");
    }

    #[test]
    fn template_label_method() {
        let obj = json!({"Labels": {"a": "1", "b": "x=y"}});
        let docker = json!({"Labels": "a=1,com.example.b=two"});
        assert_eq!(run("{{.Label \"a\"}}", &obj), "1");
        assert_eq!(run("{{.Label \"zzz\"}}", &obj), "");
        assert_eq!(run("{{.Label \"com.example.b\"}}", &docker), "two");
        assert_eq!(run("{{\"a\" | .Label}}", &docker), "1");
        assert_eq!(run("{{.Label \"a\"}}", &json!({})), "");
        let p = Program::parse("{{.Label}}").map_err(|e| e.to_string());
        assert!(p.is_ok());
        assert!(Program::parse("{{.Label \"a\" \"b\"}}")
            .and_then(|p| p.execute(&obj))
            .is_err());
    }

    #[test]
    fn template_parse_errors() {
        for (src, want) in [
            ("{{.ID", "unclosed action"),
            ("{{nosuch .X}}", "function \"nosuch\" not defined"),
            ("{{end}}", "unexpected {{end}}"),
            ("{{if .X}}", "unexpected EOF"),
            ("{{range .X}}{{else}}", "unexpected EOF"),
            ("{{else}}", "unexpected {{else}}"),
            ("{{$x}}", "undefined variable \"$x\""),
            (
                "{{if 1}}{{$y := 2}}{{end}}{{$y}}",
                "undefined variable \"$y\"",
            ),
            ("{{(.X}}", "unclosed left paren"),
            ("{{.X)}}", "unexpected right paren"),
            ("{{}}", "missing value for command"),
            ("{{break}}", "outside {{range}}"),
            ("{{\"abc}}", "unterminated quoted string"),
            ("{{.X | \"a\"}}", "non executable command"),
            ("{{/* x }}", "unclosed comment"),
            ("{{template \"x\"}}", "not supported"),
        ] {
            match Program::parse(src) {
                Ok(_) => panic!("{src}: parsed"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(e.starts_with("template: "), "{src}: {e}");
                    assert!(e.contains(want), "{src}: {e}");
                }
            }
        }
    }

    #[test]
    fn template_runtime_errors() {
        let v = container();
        for (src, want) in [
            ("{{.Name.Foo}}", "can't evaluate field Foo in type string"),
            ("{{index .Labels 1}}", "should be string"),
            ("{{index .Config.Cmd 5}}", "index out of range: 5"),
            ("{{range .Name}}{{end}}", "range can't iterate over /web"),
            ("{{eq .Name 1}}", "incompatible types"),
            ("{{len .Zero}}", "len of type int"),
            ("{{.State.Status \"x\"}}", "not a method"),
        ] {
            let result = Program::parse(src).and_then(|p| p.execute(&v));
            match result {
                Ok(out) => panic!("{src}: rendered {out:?}"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(e.starts_with("template: :1: executing"), "{src}: {e}");
                    assert!(e.contains(want), "{src}: {e}");
                }
            }
        }
    }

    #[test]
    fn template_header() {
        let p = |s: &str| Program::parse(s).map(|p| p.header(&|f: &str| f.to_uppercase()));
        assert_eq!(p("{{.ID}}\t{{.Names}}").ok().as_deref(), Some("ID\tNAMES"));
        assert_eq!(
            p("{{.Label \"a\"}}\t{{json .State.Status}}\t{{(index .M \"k\").F}}\t{{\"x\"}}")
                .ok()
                .as_deref(),
            Some("LABEL\tSTATE.STATUS\tM\t")
        );
        assert_eq!(
            p("{{$x := .A}}{{if .Running}}y{{end}}\t{{range .Mounts}}{{.Source}}{{end}}")
                .ok()
                .as_deref(),
            Some("RUNNING\tMOUNTS")
        );
    }
}
